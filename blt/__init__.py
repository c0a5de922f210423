"""blt: tokenizer-free language modelling with the Byte Latent Transformer."""
__version__ = "0.1.0"
