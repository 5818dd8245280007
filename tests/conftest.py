"""Shared test set-up.

Every test runs on one intra-op thread, restored afterwards:

* the tensors in unit tests are tiny, and handing them to a second thread costs more than it
  saves (30-60x slower on a loaded 2-core machine);
* CLI and training code under test may call ``torch.set_num_threads`` in-process, which would
  otherwise leak into later tests;
* ``test_fit`` checks that a batched fit follows *exactly* the iterates of the same fits run one at
  a time. With several threads BLAS splits its reductions differently for different batch sizes,
  and the resulting rounding (1e-16) is amplified by ill-conditioned fits to ~1e-9; on one thread
  the two programs do the same arithmetic per replicate and must agree to 1e-10.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def float64_default() -> Iterator[None]:
    """float64 default dtype for one test (restored after it); modules opt in with
    ``pytestmark = pytest.mark.usefixtures("float64_default")``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
