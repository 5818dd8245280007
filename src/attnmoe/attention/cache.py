"""The key/value cache for incremental decoding, and attention masks in internal form.

* :class:`KVCache` -- the keys and values ``(B, KV, S, D)`` a self-attention layer has seen.
* :func:`user_masks` -- a layer's ``attn_mask``/``key_padding_mask`` as one internal mask.
* ``Mask`` -- None, a bool tensor (True = may attend, SDPA's convention) or an additive
  float tensor; ``_and_masks`` combines two, ``_as_additive`` turns one into a float mask
  and :func:`causal_allowed` builds the causal one (with a cache offset).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache", "Mask", "causal_allowed", "user_masks"]


class KVCache:
    """Keys and values of the tokens a self-attention layer has seen, for incremental decoding.

    One cache per layer.  ``layer(x_new, cache=cache)`` attends from the new tokens to the
    cached keys plus their own, then appends their keys and values; the outputs equal the
    last rows of a full recomputation on the whole sequence so far (tests: 1e-6 in float32
    for every variant).  Keys are stored after a G3 gate and values after the value
    activation and a G2 gate (each depends on its own token only), ``(B, KV, S, D)`` (``KV``
    key/value heads; keys after q/k norm and RoPE at their own positions).

    Attributes:
        k, v: ``(B, KV, S, D)`` tensors, or None while empty.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def reset(self) -> None:
        self.k = self.v = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``(B, KV, T, D)`` keys/values; return all keys/values ``(B, KV, S, D)``."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            if self.k.shape[:2] != k.shape[:2] or self.k.shape[-1] != k.shape[-1]:
                raise ValueError(
                    f"cache holds (B, H, ., D)={tuple(self.k.shape)}, new keys are "
                    f"{tuple(k.shape)}: a KVCache belongs to one layer and one batch"
                )
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def __repr__(self) -> str:
        return f"KVCache(len={len(self)})"


# A mask in internal form: None, a bool tensor True = may attend (SDPA's convention), or an
# additive float tensor; either broadcastable to (B, H, T, S).
Mask = Tensor | None


def _and_masks(a: Mask, b: Mask) -> Mask:
    """Combine two internal masks (bool allowed or additive float)."""
    if a is None or b is None:
        return a if b is None else b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    if a.dtype == torch.bool:
        a, b = b, a
    # a is float now
    return a + b if b.dtype != torch.bool else a.masked_fill(~b, float("-inf"))


def _as_additive(mask: Mask, dtype: torch.dtype) -> Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~mask, float("-inf")
    )


def causal_allowed(T: int, S: int, offset: int, device: torch.device) -> Tensor:
    """Bool ``(T, S)``: query t (absolute position ``t + offset``) may see key s iff s <= t + offset."""
    t = torch.arange(T, device=device)[:, None] + offset
    return torch.arange(S, device=device)[None, :] <= t


def user_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Mask:
    """A layer's ``attn_mask`` and ``key_padding_mask`` (nn.MultiheadAttention's convention:
    bool True = may *not* attend, or additive float) as one internal mask; ``shape`` is
    ``(B, H, T, S)``.  Raises ValueError/TypeError on a bad shape or dtype."""
    B, H, T, S = shape
    out: Mask = None
    if key_padding_mask is not None:
        _check_mask_dtype("key_padding_mask", key_padding_mask)
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(
                f"key_padding_mask must have shape (B, S)=({B}, {S}) (S = keys: the "
                f"context, or cached plus new tokens), got {tuple(key_padding_mask.shape)}"
            )
        out = _internal(key_padding_mask[:, None, None, :], dtype)  # (B, 1, 1, S)
    if attn_mask is not None:
        _check_mask_dtype("attn_mask", attn_mask)
        ok = 2 <= attn_mask.dim() <= 4
        if ok:
            try:
                ok = torch.broadcast_shapes(attn_mask.shape, (B, H, T, S)) == (B, H, T, S)
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"attn_mask must broadcast to (B, H, T, S)=({B}, {H}, {T}, {S}) "
                f"with 2 to 4 dims, got {tuple(attn_mask.shape)} (nn.MultiheadAttention's "
                "(B*H, T, S) layout: reshape it to (B, H, T, S))"
            )
        out = _and_masks(out, _internal(attn_mask, dtype))
    return out


def _check_mask_dtype(name: str, mask: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be bool (True = may not attend) or float (added to the "
            f"logits), got {mask.dtype}"
        )


def _internal(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return ~mask if mask.dtype == torch.bool else mask.to(dtype)
