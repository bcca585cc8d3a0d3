"""Data that ships with the library and readers for users' files."""

from cerebrum.data.arrays import load_arrays

__all__ = ["load_arrays"]
