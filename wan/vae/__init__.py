"""The latent space and its decoders: normalisation and shape rules (``latent``), the Wan 2.1 VAE (``wan21``),
the Wan 2.2 VAE (``wan22``) and the tiny preview decoder taew2_1 (``taehv``)."""
