"""Forward-hook probes for the attention-sink quantities of Qiu et al. (arXiv 2505.06708).

Attach to any ``nn.Module`` that contains :class:`~attnmoe.attention.Attention` layers;
run forward passes as usual; read one row of statistics per attention layer.  Hooks only
read tensors (under ``torch.no_grad``); the model's outputs and gradients are unchanged.

Per layer, averaged over every forward call seen (weighted by element counts):

* ``first_token_share`` -- mean over (batch, head, query) rows of
  ``w[t, 0] / sum_s w[t, s]``, the attention weight on the first key token.  For softmax
  scores the row sum is 1; for sigmoid scores (weights not normalised) the share is taken
  relative to the row's total weight.  Rows with no allowed key are skipped.  The weights
  are recomputed from the layer input (context and masks included) by
  ``Attention.weights`` (the SDPA kernel never forms them), which costs one extra
  ``(B, H, T, S)`` product per probed call.  Calls with a ``KVCache`` that held keys before
  the call are not counted in this share (those keys are not in the call's inputs);
  ``cached_calls`` counts them (a first call into an empty cache is counted as usual).
* ``max_abs_hidden`` -- ``max |x|`` of the hidden state entering the layer, and
  ``max_abs_output`` -- ``max |y|`` of the layer's output (maximum over all calls).
* ``mean_output_gate`` -- mean of the output gate ``sigmoid(X W_theta + b_theta)`` over
  all entries (None for layers without an output gate).
* ``small_output_fraction`` -- fraction of entries of the concatenated per-head
  attention output (the input of ``out_proj``, after a G1 gate) with ``|value| < threshold``
  (default 1e-2).

Example::

    with AttentionProbes(model) as probes:
        model(batch)
    table = probes.summary()   # {layer name: {quantity: value}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .attention import Attention

__all__ = ["AttentionProbes", "LayerStats"]


@dataclass
class LayerStats:
    """Running sums for one attention layer (see the module docstring for definitions)."""

    share_sum: float = 0.0
    share_count: int = 0
    max_abs_hidden: float = 0.0
    max_abs_output: float = 0.0
    gate_sum: float = 0.0
    gate_count: int = 0
    cached_calls: int = 0
    small_sum: float = 0.0
    small_count: int = 0
    calls: int = 0
    gated: bool = field(default=False)

    def as_dict(self) -> dict[str, float | int | None]:
        def ratio(s: float, n: int) -> float | None:
            return s / n if n else None

        return {
            "first_token_share": ratio(self.share_sum, self.share_count),
            "max_abs_hidden": self.max_abs_hidden,
            "max_abs_output": self.max_abs_output,
            "mean_output_gate": ratio(self.gate_sum, self.gate_count) if self.gated else None,
            "small_output_fraction": ratio(self.small_sum, self.small_count),
            "calls": self.calls,
            "cached_calls": self.cached_calls,
        }


class AttentionProbes:
    """Collect attention-sink statistics from every ``Attention`` layer of a model.

    Args:
        model: any module; every submodule that is an ``Attention`` is probed (the model
            itself too, if it is one).
        threshold: magnitude under which an attention-output entry counts as small.

    Use as a context manager (hooks removed on exit) or call :meth:`attach` /
    :meth:`detach`.  :meth:`reset` clears the statistics.
    """

    def __init__(self, model: nn.Module, *, threshold: float = 1e-2) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.model = model
        self.threshold = float(threshold)
        self.layers: dict[str, Attention] = {
            name or "<root>": m for name, m in model.named_modules() if isinstance(m, Attention)
        }
        if not self.layers:
            raise ValueError("model contains no attnmoe.attention.Attention layer to probe")
        self.stats: dict[str, LayerStats] = {}
        self._handles: list[RemovableHandle] = []
        self._recomputing = False
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        self.stats = {
            name: LayerStats(gated=m.output_gate_proj is not None)
            for name, m in self.layers.items()
        }

    def attach(self) -> AttentionProbes:
        if self._handles:
            return self
        for name, layer in self.layers.items():
            st = self.stats[name]
            self._handles.append(
                layer.register_forward_hook(self._layer_hook(st), with_kwargs=True)
            )
            self._handles.append(layer.out_proj.register_forward_pre_hook(self._out_proj_hook(st)))
            if layer.output_gate_proj is not None:
                self._handles.append(
                    layer.output_gate_proj.register_forward_hook(self._gate_hook(st))
                )
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> AttentionProbes:  # noqa: PYI034 - attach() returns self
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """``{layer name: {quantity: value}}`` in model order."""
        return {name: st.as_dict() for name, st in self.stats.items()}

    # ------------------------------------------------------------------ hooks
    def _layer_hook(self, st: LayerStats):
        def hook(
            layer: Attention, args: tuple[Any, ...], kwargs: dict[str, Any], out: Tensor
        ) -> None:
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            with torch.no_grad():
                cache = kwargs.get("cache")
                if cache is None or len(cache) == x.shape[1]:  # no earlier keys: a prefill
                    self._recomputing = True  # the gate hook must not count this second pass
                    try:
                        w = layer.weights(  # (B, H, T, S)
                            x.detach(),
                            None if context is None else context.detach(),
                            attn_mask=kwargs.get("attn_mask"),
                            key_padding_mask=kwargs.get("key_padding_mask"),
                            positions=kwargs.get("positions"),
                            rotary=kwargs.get("rotary"),
                        )
                    finally:
                        self._recomputing = False
                    total = w.sum(-1)  # (B, H, T)
                    ok = total > 0
                    share = w[..., 0][ok] / total[ok]
                    st.share_sum += share.sum().item()
                    st.share_count += share.numel()
                else:
                    st.cached_calls += 1
                st.max_abs_hidden = max(st.max_abs_hidden, x.detach().abs().max().item())
                st.max_abs_output = max(st.max_abs_output, out.detach().abs().max().item())
                st.calls += 1

        return hook

    def _out_proj_hook(self, st: LayerStats):
        thr = self.threshold

        def hook(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            y = args[0].detach()  # (B, T, dim): concatenated head outputs
            st.small_sum += (y.abs() < thr).sum().item()
            st.small_count += y.numel()

        return hook

    def _gate_hook(self, st: LayerStats):
        def hook(_m: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> None:
            if self._recomputing:
                return
            g = torch.sigmoid(out.detach())
            st.gate_sum += g.sum().item()
            st.gate_count += g.numel()

        return hook
