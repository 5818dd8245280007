"""The hmoe family (arXiv 2602.01468): an attention-shaped hierarchical MoE with a sigmoid gate
at one position; its truth and starts (:mod:`.truth`), objective (:mod:`.objective`), losses per
level (:mod:`.losses`) and study cell (:mod:`.experiment`). The preset is
:mod:`attnmoe.estimation.study.presets.hmoe`.
"""

from attnmoe.estimation.families.hmoe.experiment import fit_block
from attnmoe.estimation.families.hmoe.losses import l2_error, level_losses
from attnmoe.estimation.families.hmoe.objective import HMoEObjective
from attnmoe.estimation.families.hmoe.truth import (
    DIM,
    HEADS_TRUE,
    POSITIONS,
    START_KINDS,
    TOKENS,
    TRUTH,
    HMoEConfig,
    HMoESetting,
    hmoe_settings,
    sample,
    start_points,
    true_params,
)

__all__ = ["DIM", "HEADS_TRUE", "POSITIONS", "START_KINDS", "TOKENS", "TRUTH", "HMoEConfig", "HMoEObjective",
           "HMoESetting", "fit_block", "hmoe_settings", "l2_error", "level_losses", "sample", "start_points",
           "true_params"]
