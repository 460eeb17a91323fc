"""snipnb: a small library for asking whether SNIP helps few-shot, transfer and continual learning."""

__version__ = "0.1.0"
