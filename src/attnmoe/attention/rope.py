"""Rotary position embedding (RoPE) for :class:`~attnmoe.attention.Attention`.

RoFormer (Su et al., arXiv 2104.09864) in the "rotate-half" layout that Llama, Qwen and the
``transformers`` library use: head coordinate ``c < D/2`` is paired with ``c + D/2`` and the
pair is rotated by the angle ``p * theta_c`` at position ``p``::

    theta_c = base^(-2c / D),   c = 0 .. D/2 - 1
    rope(u, p) = u * cos(p theta) + rotate_half(u) * sin(p theta),
    rotate_half([u1, u2]) = [-u2, u1]                 # u1, u2: the two halves of u (D/2 each)

so ``rope(q, p_j) . rope(k, p_i)`` depends on the positions only through ``p_j - p_i``.
:func:`rotation_matrices` gives the same map as ``(D, D)`` matrices (used by ``as_moe`` and
by tests as an independent computation).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "apply_rotary", "inverse_frequencies", "rotary_at", "rotary_cos_sin", "rotation_matrices",
]


def inverse_frequencies(
    head_dim: int,
    base: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Tensor:
    """``theta_c = base^(-2c/D)`` ``(D/2,)`` computed in ``dtype`` (in float32 this is the
    ``transformers`` default rope, operation for operation)."""
    idx = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device)
    return 1.0 / (base ** (idx.to(dtype) / head_dim))


def rotary_cos_sin(
    head_dim: int, base: float, positions: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``cos``/``sin`` ``(..., T, D)`` of the angles ``p * theta`` for positions ``(..., T)``.

    Frequencies and angles are formed in float32 (float64 when ``dtype`` is float64), then
    cast to ``dtype``.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = inverse_frequencies(head_dim, base, work, positions.device)
    ang = positions.to(work)[..., None] * inv_freq  # (..., T, D/2)
    ang = torch.cat([ang, ang], dim=-1)  # (..., T, D)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotary_at(
    head_dim: int,
    base: float,
    T: int,
    offset: int,
    positions: Tensor | None,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """``cos``/``sin`` ``(B|1, 1, T, D)`` at ``positions`` ``(T,)``/``(B, T)`` (default
    ``offset + 0..T-1``), ready to broadcast over ``(B, H, T, D)``."""
    if positions is None:
        positions = torch.arange(offset, offset + T, device=device)
    elif positions.dim() not in (1, 2) or positions.shape[-1] != T:
        raise ValueError(
            f"positions must be (T,) or (B, T) with T={T}, got {tuple(positions.shape)}"
        )
    cos, sin = rotary_cos_sin(head_dim, base, positions, dtype)  # (..., T, D)
    if cos.dim() == 2:
        return cos[None, None], sin[None, None]
    return cos[:, None], sin[:, None]


def apply_rotary(u: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``u * cos + rotate_half(u) * sin`` for ``u`` ``(B, H, T, D)``, cos/sin ``(B|1, 1, T, D)``."""
    half = u.shape[-1] // 2
    rotated = torch.cat([-u[..., half:], u[..., :half]], dim=-1)
    return u * cos + rotated * sin


def rotation_matrices(cos: Tensor, sin: Tensor) -> Tensor:
    """``(T, D, D)`` matrices ``R_p`` with ``rope(u, p) = R_p u`` from cos/sin ``(T, D)``."""
    D = cos.shape[-1]
    half = D // 2
    rot = torch.zeros(D, D, dtype=cos.dtype, device=cos.device)  # rotate_half as a matrix
    idx = torch.arange(half, device=cos.device)
    rot[idx, idx + half] = -1.0
    rot[idx + half, idx] = 1.0
    eye = torch.eye(D, dtype=cos.dtype, device=cos.device)
    return cos[:, :, None] * eye + sin[:, :, None] * rot  # (T, D, D)
