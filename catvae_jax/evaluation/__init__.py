"""Evaluation of a trained model: `likelihood` (eval.json: ELBO, bits/dim, reconstruction
SSIM) and `sample_quality` (FD, KID, precision, recall of samples in AlexNet features)."""
