"""lightning_juicer: train CLIP-family models on juiced (token-level governed) image-text data."""

__version__ = "0.1.0"
