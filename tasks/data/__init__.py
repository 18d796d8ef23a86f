"""Data preparation: read and validate sources, clean, dedup, split, tokenize, pack."""
