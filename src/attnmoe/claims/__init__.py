"""The claims ledger (issue 22): every claim of the seed papers, decided from the committed records.

* :mod:`~attnmoe.claims.registry` — the claims, their quantities, predictions, families;
* :mod:`~attnmoe.claims.stats` — per-seed slopes, t-interval, sign-flip p, power;
* :mod:`~attnmoe.claims.coverage` — the simulated coverage of the interval;
* :mod:`~attnmoe.claims.ledger` — reading the records, the verdict rule;
* :mod:`~attnmoe.claims.render` — ``docs/claims.md`` and ``docs/claims.json``.

``attnmoe claims`` (``attnmoe.commands.claims``) runs them.
"""

from attnmoe.claims.ledger import VERDICTS, Row, decide, evaluate, load_records
from attnmoe.claims.registry import CLAIMS, FAMILIES, Claim, RateArm, RealArm

__all__ = ["CLAIMS", "FAMILIES", "VERDICTS", "Claim", "RateArm", "RealArm", "Row", "decide", "evaluate",
           "load_records"]
