"""Numpy over captured tensors and weights: lens, attention, unembedding,
embeddings."""
