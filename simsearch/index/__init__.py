"""Vector indexes: the native int8 HNSW index and the hnswlib/faiss backends."""

from simsearch.index.core import Index

__all__ = ["Index"]
