"""attnmoe: attention and gating read as mixtures of experts.

Three layers, each usable on its own (see ``docs/`` and the project README):

* ``attnmoe.moe`` / ``attnmoe.estimation`` -- MoE regression models with quadratic,
  linear ... gates, least-squares estimation, Voronoi losses, convergence-rate studies.
* ``attnmoe.attention`` -- one multi-head attention module with the variants the
  theory motivates (active, gated, sigmoid) and its exact rewrite as a quadratic-gating MoE.
* ``attnmoe.tasks`` / ``attnmoe.train`` -- small ViT, GPT and forecasting models, one
  training loop and a seed-averaged ``compare`` command.
"""

__version__ = "0.1.0"
