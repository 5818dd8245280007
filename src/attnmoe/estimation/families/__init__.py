"""Model families, one package each: truths, model / objective (value, gradient, Hessian),
losses, and the study cell that fits a block of replicate seeds into records.

* :mod:`.least_squares` -- softmax / sigmoid-gated MoE regression by least squares (linear,
  quadratic polynomial / monomial, cosine gates x linear and non-linear experts), Voronoi D1/D2;
* :mod:`.likelihood` -- Gaussian / Laplace / multinomial-logistic MoE by maximum likelihood
  (top-K, temperature, contaminated);
* :mod:`.hmoe` -- the attention-shaped hierarchical MoE of the gate-position study;
* :mod:`.common` -- what every family's study cell shares (JSON-ready records, near-best set);
* :mod:`.options` -- ONE table of every family's fit defaults (:data:`~.options.FIT_DEFAULTS`) and
  why they differ.

Families import the solvers and :mod:`attnmoe.moe`, never the study engine.
"""
