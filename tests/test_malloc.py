"""Fixed glibc malloc thresholds (attnmoe._malloc): set once per process, and a no-op on numbers.

Each test runs in a fresh subprocess: the thresholds are per-process state, and a process that
already set them (this one, after a study test) could not show the before/after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc only",
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    clean.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), **env)
    out = subprocess.run([sys.executable, "-c", code], env=clean, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# mallinfo2's hblkhd: bytes in chunks malloc has mmapped; an 8 MiB block is mmapped under
# glibc's default threshold (128 KiB) and comes from the heap under the fixed one (64 MiB).
_MAPPED = """
import ctypes, json
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
def mapped_by_8mib_block():
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(8 << 20)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(ctypes.c_void_p(p))
    return grew
"""


def test_fix_malloc_thresholds_applies_once_and_takes_effect() -> None:
    r = _run(_MAPPED + """
from attnmoe._malloc import fix_malloc_thresholds
out = {"mapped_before": mapped_by_8mib_block()}
out["first"], out["second"] = fix_malloc_thresholds(), fix_malloc_thresholds()
out["mapped_after"] = mapped_by_8mib_block()
print(json.dumps(out))
""")
    assert r["first"] is True and r["second"] is True
    assert r["mapped_before"] >= 8 << 20 and r["mapped_after"] == 0


def test_fix_malloc_thresholds_leaves_an_explicit_environment_alone() -> None:
    r = _run(_MAPPED + """
from attnmoe._malloc import fix_malloc_thresholds
print(json.dumps({"applied": fix_malloc_thresholds(), "mapped": mapped_by_8mib_block()}))
""", MALLOC_TRIM_THRESHOLD_=str(1 << 20))
    # not overridden: the user's trim threshold alone keeps the mmap threshold at its 128 KiB start
    assert r["applied"] is False and r["mapped"] >= 8 << 20


def test_a_study_record_is_bitwise_equal_with_and_without_fixed_thresholds() -> None:
    """The same block fitted before (glibc's defaults) and after (through call_with_threads,
    which fixes the thresholds) in one process: malloc does not change a number."""
    r = _run("""
import json
from attnmoe import _malloc
from attnmoe.estimation.families.least_squares.truth import get_setting
from attnmoe.estimation.study import FitOptions
from attnmoe.estimation.study.backends import call_with_threads
from attnmoe.estimation.study.presets.least_squares import fit_block
job = (get_setting("monomial-linear-over"), 300, [0, 1], FitOptions(max_iter=40, n_test=500))
before = fit_block(*job, threads=1)
was = _malloc._applied
after = call_with_threads(fit_block, 1, job)
strip = lambda recs: json.dumps([{k: v for k, v in r.items() if "second" not in k} for r in recs], sort_keys=True)
print(json.dumps({"was": was, "applied": _malloc._applied, "equal": strip(before) == strip(after),
                  "keys": sorted(before[0])}))
""")
    assert r["was"] is None and r["applied"] is True
    assert r["equal"], r["keys"]
