"""The networks and what their loss is made of: `networks` (the models by name), `layers`,
`losses` (the training objective), `ssim` and `perceptual` (LPIPS). Images are NHWC in [0, 1]."""
