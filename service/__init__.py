"""The inference service (FastAPI): embeddings, kNN retrieval and attention maps."""
