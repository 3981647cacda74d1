"""Segmentation targets: the vocabulary, free-text prompts and their numpy text embedding (torch-free)."""
