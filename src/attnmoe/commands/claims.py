"""``attnmoe claims``: the claims ledger, regenerated from the committed records (issue 22).

    attnmoe claims                          # docs/claims.md and docs/claims.json from docs/rates, docs/results
    attnmoe claims --docs DIR --out-md X.md --out-json X.json
    attnmoe claims --check                  # exit 1 when the committed ledger is not what the records give

Reads ``DIR/rates/<study>/records.jsonl[.gz]`` and ``DIR/results/<comparison>/summary.json`` for
every claim of ``attnmoe.claims.registry``, decides each by the one rule of
``attnmoe.claims.ledger`` and writes both files atomically (temporary file + rename).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from attnmoe.claims.coverage import SEED_COUNTS, simulate_coverage
from attnmoe.claims.ledger import evaluate
from attnmoe.claims.render import ledger_json, ledger_markdown, write_ledger

DocsOpt = Annotated[Path, typer.Option("--docs", help="Folder holding rates/ and results/ (the records).")]


def claims(
    docs: DocsOpt = Path("docs"),
    out_md: Annotated[Path | None, typer.Option("--out-md", help="Markdown ledger (default DOCS/claims.md).")] = None,
    out_json: Annotated[Path | None, typer.Option("--out-json", help="JSON ledger (default DOCS/claims.json).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if the files differ from a regeneration.")] = False,
) -> None:
    """Decide every registered claim from the committed records and write the ledger."""
    start = time.perf_counter()
    md_path = out_md if out_md is not None else docs / "claims.md"
    json_path = out_json if out_json is not None else docs / "claims.json"
    try:
        if not (docs / "rates").is_dir() or not (docs / "results").is_dir():
            raise ValueError(f"--docs {docs}: needs the folders rates/ and results/ of committed records")
        for path in (md_path, json_path):
            if not check and not path.parent.is_dir():
                raise ValueError(f"{path}: folder {path.parent} does not exist")
        rows = evaluate(docs)
        coverage = [simulate_coverage(s) for s in SEED_COUNTS]
    except (ValueError, KeyError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    if check:
        stale = [str(p) for p, text in ((md_path, ledger_markdown(rows, coverage)), (json_path, ledger_json(rows, coverage)))
                 if not p.is_file() or p.read_text(encoding="utf-8") != text]
        if stale:
            typer.echo(f"stale: {', '.join(stale)} (run attnmoe claims)", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"up to date: {md_path}, {json_path}")
        return
    write_ledger(md_path, json_path, rows, coverage)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    typer.echo(f"{len(rows)} claims ({summary}) -> {md_path}, {json_path} ({time.perf_counter() - start:.1f} s)")
