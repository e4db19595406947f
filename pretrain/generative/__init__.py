"""Building blocks of the generative pretraining methods (VAE, GAN): decoder/generator networks sized from the
image size, the VAE's probabilistic maths, the GAN losses in logit form, and image-grid PNGs."""
