"""batched_hessian against torch.func's Hessian of each row alone (an independent computation)."""

from __future__ import annotations

import pytest
import torch

from attnmoe.estimation.solvers.derivatives import batched_hessian


def _row_loss(z: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """A non-quadratic loss of one row z (P,): log-sum-exp of A z plus a quartic; z[-1] unused."""
    u = A @ z[:-1]
    return torch.logsumexp(u, 0) + 0.25 * (z[:-1] ** 4).sum() + torch.sin(z[0] * z[1])


def test_matches_torch_func_hessian_per_row() -> None:
    g = torch.Generator().manual_seed(0)
    m, P = 5, 7
    A = torch.randn(4, P - 1, generator=g, dtype=torch.float64)
    x = torch.randn(m, P, generator=g, dtype=torch.float64)
    f, grad, H = batched_hessian(lambda z: torch.stack([_row_loss(r, A) for r in z]), x)
    for r in range(m):
        torch.testing.assert_close(f[r], _row_loss(x[r], A), rtol=1e-14, atol=0)
        torch.testing.assert_close(grad[r], torch.func.grad(_row_loss)(x[r], A), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(H[r], torch.func.hessian(_row_loss)(x[r], A), rtol=1e-12, atol=1e-14)
    assert torch.equal(H[:, -1], torch.zeros(m, P, dtype=torch.float64))  # the unused coordinate
    assert not f.requires_grad and not H.requires_grad


def test_a_row_does_not_depend_on_the_batch() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(3, 200, generator=g, dtype=torch.float64)

    def loss(z: torch.Tensor) -> torch.Tensor:  # (m, 3) -> (m,): a mean over 200 samples per row
        u = (z.unsqueeze(-1) * W).sum(1)  # (m, 200); no matmul, whose blocking depends on m
        return torch.tanh(u).square().mean(-1) + (z**3).sum(-1)

    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    full = batched_hessian(loss, x)
    for r in (0, 3, 5):
        alone = batched_hessian(loss, x[r : r + 1])
        assert all(torch.equal(a[0], b[r]) for a, b in zip(alone, full))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(m, P\)"):
        batched_hessian(lambda z: z.sum(), torch.zeros(3))
    with pytest.raises(ValueError, match="loss must return"):
        batched_hessian(lambda z: z.sum(), torch.zeros(2, 3))
