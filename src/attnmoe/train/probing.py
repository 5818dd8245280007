"""Attention-sink probes on a trained model's final evaluation (Qiu et al., arXiv 2505.06708).

Qiu et al. explain why a sigmoid output gate helps by what it removes: without it, much of
every query's attention goes to the first token (their Table: 0.467 of the weight ungated vs
0.048 with the G1 gate) and the hidden state carries a few huge activations. A comparison of
gate positions therefore records, per run, on the split it evaluates last:

* ``<split>_first_token_share`` -- the attention weight on the first key token, as
  :class:`~attnmoe.attention.AttentionProbes` defines it (mean over batch, head and query
  rows of each layer), averaged over the model's attention layers with equal weight;
* ``<split>_max_abs_hidden`` -- ``max |x|`` of the hidden state entering any attention layer;
* ``<split>_max_abs_output`` -- ``max |y|`` of any attention layer's output.

The probes only read tensors; the evaluation's own metrics are unchanged (tested). For a ViT
the first token is the class token; for the forecaster (tokens = variates) it is the first
variate, so the share is a sink measure only for the language model.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from attnmoe.attention import Attention, AttentionProbes

__all__ = ["PROBE_METRICS", "evaluate_with_probes"]

#: per-run probe metrics, without the ``<split>_`` prefix
PROBE_METRICS = ("first_token_share", "max_abs_hidden", "max_abs_output")


def evaluate_with_probes(
    evaluate: Callable[[nn.Module, str], dict[str, float]], model: nn.Module, split: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Run ``evaluate(model, split)`` with attention probes attached.

    Args:
        evaluate: the task's evaluation (``model, split -> {name: value}``).
        model: the trained model.
        split: ``"val"`` or ``"test"``.

    Returns:
        The evaluation's metrics, and the probe metrics named ``<split>_<quantity>`` (empty when
        the model has no attention layer or no row was probed).
    """
    if not any(isinstance(m, Attention) for m in model.modules()):
        return evaluate(model, split), {}
    with AttentionProbes(model) as probes:
        metrics = evaluate(model, split)
    layers = [row for row in probes.summary().values() if row["calls"]]
    shares = [float(row["first_token_share"]) for row in layers if row["first_token_share"] is not None]
    found: dict[str, float] = {}
    if shares:
        found[f"{split}_first_token_share"] = sum(shares) / len(shares)
    if layers:
        found[f"{split}_max_abs_hidden"] = max(float(row["max_abs_hidden"]) for row in layers)
        found[f"{split}_max_abs_output"] = max(float(row["max_abs_output"]) for row in layers)
    return metrics, found
