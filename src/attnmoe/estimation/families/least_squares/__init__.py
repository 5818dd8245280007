"""The least-squares family (arXiv 2410.11222 and the gating papers), from the bottom up:

* :mod:`.truth`, :mod:`.gating_truths` -- settings (ground truths) and nested samples;
* :mod:`.objective` -- closed-form loss, gradient and Hessian; :mod:`.autograd_objective` --
  the same for gates without a closed form;
* :mod:`.init` -- starts; :mod:`.fit` -- batched fits (trust region, L-BFGS, Adam; the box);
* :mod:`.voronoi` -- Voronoi losses D1/D2, identifiability statistics, the L2 error of f;
* :mod:`.options` -- :class:`~.options.FitOptions`, the options of a study cell (defaults: the one
  table of every family's, :data:`attnmoe.estimation.families.options.FIT_DEFAULTS`);
* :mod:`.experiment` -- one study cell: sample, fit and score a block of replicate seeds.
"""
