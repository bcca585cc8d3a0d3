"""Helpers every layer may import: argument checks (`validation`), sequence batching
(`sequences`: frames + lengths <-> padded) and atomic file writes (`files`)."""
