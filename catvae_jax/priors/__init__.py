"""Latent priors for sampling, pure functions of latents: `gmm` (a Gaussian mixture fitted to
the training images' posterior means) and `flow` (a RealNVP flow, the learned prior)."""
