"""diffvae: VAEs, pixel diffusion and latent diffusion, trained and measured on your data."""
__version__ = "0.1.0"
