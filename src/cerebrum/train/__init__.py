"""Training and evaluation of the neural families."""

from cerebrum.train.metrics import bits_per_byte, document_nll

__all__ = ["bits_per_byte", "document_nll"]
