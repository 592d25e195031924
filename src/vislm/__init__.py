"""vislm: visually-enhanced language modeling."""

__version__ = "0.1.0"


def load(directory):
    """Load a model saved by `save_pretrained` (every `vislm train` run writes one to RUN/model)."""
    from vislm.pretrained import load as _load

    return _load(directory)
