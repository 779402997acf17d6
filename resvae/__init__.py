"""resvae: residual VAE / autoencoder experiment suite."""
