"""Vector indexes: the native int8 HNSW index and the hnswlib/faiss backends.

- :mod:`~simsearch.index.core`: :class:`Index`, the one facade users call;
- :mod:`~simsearch.index.backends`: the backend protocol, the registry, opening files;
- :mod:`~simsearch.index.native`: the compiled core adapted to the protocol;
- :mod:`~simsearch.index.container`: what the hnswlib and faiss backends share;
- :mod:`~simsearch.index.hnswlib_backend`, :mod:`~simsearch.index.faiss_backend`:
  those backends, with the bound checks their libraries' files pass before loading;
- :mod:`~simsearch.index.attributes`, :mod:`~simsearch.index.ids`: the checks of
  attributes, filters and ids that every index facade applies;
- :mod:`~simsearch.index.folder`: the index folder (index file, items table, meta)
  the CLI and the service share.
"""

from simsearch.index.core import Index

__all__ = ["Index"]
