"""Fixed glibc malloc thresholds for the processes that run fits.

glibc's malloc serves a request of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) by
its own ``mmap`` and gives it back by ``munmap`` when freed; freeing such a chunk raises the
threshold to the chunk's size (up to 32 MiB) and the trim threshold (when the heap's free top
is returned to the kernel) to twice that. So whether the trust-region fit's few-MB temporaries
(the torch assembly's Hessian products) come from the heap or from fresh, page-faulted
mappings on every call depends on what the process allocated and freed before: the same fit
ran in 370 or 550 ms per replicate depending on the process (equal instruction counts).
Setting either threshold with ``mallopt`` turns the dynamic adjustment off for the process;
:func:`fix_malloc_thresholds` sets both once, to the values of the measurement in
``docs/rates/solver/malloc_thresholds.txt`` (``benchmarks/malloc_thresholds.py``):

* ``M_MMAP_THRESHOLD = 64 MiB``: the fit's temporaries come from the heap and are reused, not
  re-mapped (monomial-linear-over, torch, R = 16, n = 10^3: ~2,100 minor page faults per
  ``fit_least_squares`` call instead of 0.35-1.4 million, so none of its per-call blocks reaches
  64 MiB). Only blocks of 64 MiB and more are mmapped.
* ``M_TRIM_THRESHOLD = 256 MiB``: the heap's top is given back to the kernel only when 256 MiB
  of it are free, so a job's peak is not unmapped and faulted in again by the next call.

The cost is memory a worker keeps after a peak (up to ~256 MiB of free heap top, plus
fragmentation below it), nothing on a study's numbers: malloc does not change arithmetic, the
records are bitwise equal (tests). Where the process's malloc is not glibc's (macOS, musl,
Windows) nothing is done; an explicit ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
(or ``GLIBC_TUNABLES`` naming either) in the environment is the user's choice and left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "fix_malloc_thresholds"]

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

_applied: bool | None = None  # this process's answer, once asked


def fix_malloc_thresholds() -> bool:
    """Set glibc's mmap and trim thresholds once per process (module docstring); ``True`` when
    they are set (by this call or an earlier one), ``False`` where that is not done: not glibc,
    or the environment already sets them. A refusal by glibc's ``mallopt`` warns and returns
    ``False``. Idempotent and cheap after the first call."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    if any(os.environ.get(k) for k in _ENV) or any(t in os.environ.get("GLIBC_TUNABLES", "") for t in _TUNABLES):
        return False
    libc = ctypes.CDLL(None)  # the symbols already in the process: its own C library
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc (musl has a mallopt that does nothing)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if done != (1, 1):
        warnings.warn(f"glibc's mallopt refused the malloc thresholds (returned {done})", RuntimeWarning,
                      stacklevel=3)
        return False
    return True
