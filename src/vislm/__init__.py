"""vislm: visually-enhanced language modeling."""

__version__ = "0.1.0"
