"""``simsearch.ray``: the old home of the Ray engine, kept so existing imports work.

The engine lives in :mod:`simsearch.sharding.ray`; use
``ShardedIndex(..., engine="ray", engine_options={...})``. ``RayIndex`` is a
deprecated alias of that (it warns when used). Importing this module without
Ray installed raises ``ImportError`` saying what to install.
"""

from __future__ import annotations

from simsearch.sharding.ray import RayEngine, RayIndex

__all__ = ["RayIndex", "RayEngine"]
