"""SIGKILL during writes: the last committed state opens and no acknowledged write is lost.

Each target (``Index.save`` over an existing good file, ``ShardedIndex.save``,
``Deduplicator.update`` + ``save``, ``Service.add`` on a durable folder) runs
in a child that commits generation after generation and logs what it began
and what returned; the parent kills it at a seeded random moment inside a
write, and the next child opens the state, checks its contents and says which
generation it found (see ``tests/_faults.py``). A second test kills each
Python writer just before each of its ``fsync``/``replace``/``rename`` calls
in turn. ``benchmarks/reliability.py`` runs the long version (100 kills per
target).
"""

from __future__ import annotations

import _faults
import pytest

KILLS = 10


@pytest.mark.parametrize("target", _faults.KILL_TARGETS)
def test_random_kills_leave_the_last_committed_state(target, tmp_path):
    result = _faults.run_kills(target, tmp_path, KILLS, seed=13)
    assert result.failures == []
    assert result.kills == KILLS and result.recovered == KILLS
    assert result.in_write >= KILLS // 2  # the kills land inside writes, not between them
    if target == "service_add":
        assert result.acked > 0


@pytest.mark.parametrize(
    "target",
    [
        "sharded_save",
        "dedup_update",
        "service_add",
    ],
)
def test_a_kill_at_every_durability_step_leaves_the_last_committed_state(target, tmp_path):
    result = _faults.run_crash_points(target, tmp_path)
    assert result.failures == []
    assert result.kills >= 2 and result.recovered == result.kills
