"""Wall time of ``attnmoe rates`` beside CPU-bound neighbours (issue 8, item 8).

Starts ``--busy`` CPU-bound processes (each a busy loop, killed at the end and bounded by
``--limit`` seconds), runs one ``attnmoe rates`` command, and prints its wall time beside the 1-minute
load average before and after. Everything after ``--`` is passed to ``attnmoe rates``; the
``--out`` directory is a fresh temporary one. ``--src DIR`` runs the package found in DIR
(e.g. an export of an older commit: ``git archive HEAD | tar -x -C /tmp/old``), so old and new
defaults can be timed on the same machine within minutes of each other.

    python benchmarks/bench_rates_load.py --busy 2 -- --preset quick --no-progress
    python benchmarks/bench_rates_load.py --busy 2 --src /tmp/old/src -- --preset quick --no-progress
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound neighbour processes")
    parser.add_argument("--src", default=None, help="put DIR first on PYTHONPATH (another version)")
    parser.add_argument("--limit", type=int, default=900, help="seconds before the neighbours stop")
    parser.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    parser.add_argument("rates_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rates_args = [a for a in args.rates_args if a != "--"]
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = args.src + os.pathsep + env.get("PYTHONPATH", "")
    # self-bounded neighbours, started directly so that kill() reaches them (a `timeout` wrapper
    # would be killed while its child kept spinning)
    spin = f"import time\nend = time.time() + {args.limit}\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
    try:
        time.sleep(2.0)
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", "from attnmoe.cli import app; app()", "rates",
                   "--out", os.path.join(tmp, "run"), *rates_args]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired as err:
                done = subprocess.CompletedProcess(cmd, -1, err.stdout or "", f"stopped after {args.timeout} s")
            wall = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
    finally:
        for p in busy:
            p.kill()
            p.wait()
    last = [line for line in done.stdout.splitlines() if "fits run" in line]
    print(f"src={args.src or 'installed'} busy={args.busy} args={' '.join(rates_args)}")
    print(f"rc={done.returncode} wall={wall:.1f}s load1 before={load_before:.2f} after={load_after:.2f}")
    print(last[0] if last else str(done.stderr)[-2000:])


if __name__ == "__main__":
    main()
