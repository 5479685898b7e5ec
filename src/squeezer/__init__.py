"""squeezer: serve Hugging Face transformer models at production speed."""

__version__ = "0.1.0"
