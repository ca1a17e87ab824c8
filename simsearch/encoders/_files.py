"""Old home of the encoders' file helpers, kept so existing imports work.

Everything here now lives in :mod:`simsearch._storage`, the one module that
writes files for every format; import from there.
"""

from __future__ import annotations

from simsearch._storage import atomic_write_bytes, cache_dir, exclusive_lock, fsync_dir
from simsearch._storage import sha256_file as file_sha256

__all__ = ["atomic_write_bytes", "cache_dir", "exclusive_lock", "file_sha256", "fsync_dir"]
