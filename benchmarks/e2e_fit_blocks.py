"""End-to-end fit times of a few blocks, to compare two versions of the code on the same machine.

    git worktree add /tmp/oldtree <commit>        # e.g. 4cdebd7, before batched_hessian
    for t in /tmp/oldtree /path/to/attnmoe; do PYTHONPATH=$t/src python benchmarks/e2e_fit_blocks.py lik|hmoe|cos; done

Same data, starts and options in both versions; each line prints the wall time, the total
trust-region iterations (equal iterations = the same fits) and, for the likelihoods, the mean NLL.
"""

import sys
import time

import torch

torch.set_num_threads(1)
what = sys.argv[1] if len(sys.argv) > 1 else "lik"
t0=time.perf_counter()
if what=='lik':
    from attnmoe.estimation.families.likelihood.settings import SETTINGS, sample_data, start_points
    from attnmoe.estimation.families.likelihood.objective import fit_likelihood
    for name in ['topk-over-K3','contaminated-b-ii','mlogit-softmax-vanish','temp-temperature']:
        s=SETTINGS[name]; seeds=list(range(8)); n=2000
        X,y=sample_data(s,n,seeds); x0=start_points(s,n,seeds)
        t=time.perf_counter(); fit=fit_likelihood(s.fit_model,X,y,x0,max_iter=200,dtol=1e-3)
        print(name, 'fit %.2f s'%(time.perf_counter()-t), 'iters', int(fit.n_iter.sum()), 'nll %.6f'%float(fit.nll.mean()))
elif what=='hmoe':
    from attnmoe.estimation.families import hmoe
    for name in ['G3-over','plain-over']:
        s=next(x for x in hmoe.hmoe_settings() if x.name==name)
        t=time.perf_counter(); recs=hmoe.fit_block(s, 1000, list(range(8)), hmoe.HMoEConfig())
        print(name, 'block %.2f s'%(time.perf_counter()-t), 'iters', sum(r['iterations'] for r in recs))
elif what=='cos':
    from attnmoe.estimation import FitOptions, fit_and_score
    from attnmoe.estimation.families.least_squares.truth import named_settings
    for name in ['crouter-cosine-gelu','crouter-perturbed-cosine-linear']:
        t=time.perf_counter(); recs=fit_and_score(named_settings()[name], 4000, list(range(4)), FitOptions(max_iter=500, n_test=4000, bound=10.0, init="near-truth:0.1"))
        print(name, 'fit %.2f s'%(time.perf_counter()-t), 'iters', sum(r['iterations'] for r in recs))
print('total %.2f s'%(time.perf_counter()-t0))
