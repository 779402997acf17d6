"""Kill campaigns: kill a training run at random moments, rerun the same command, and check that
its records end as an uninterrupted run's. Not collected by pytest (a few minutes per campaign);
tests/run/test_run_records.py runs one short campaign.

    uv run python -m tests.campaigns --campaigns 12 --seed 0
    uv run python -m tests.campaigns --campaigns 6 --seed 8 model=hvae   # any model or override

Each campaign: one reference run, then one run attempted up to `--attempts` times, each attempt
killed (SIGKILL, or SIGTERM with probability --sigterm) after a random delay, the last one left to
finish. It then compares metrics.csv with the reference: every (epoch or step, metric) pair must
appear exactly once with the same value (rel 1e-4); it also checks summary.json's status and
that no temporary file is left. Prints one line per campaign and a total.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = [
    "experiment=smoke",
    "data.train_size=160",
    "data.val_size=32",
    "data.test_size=32",
    "logger=csv",
    "trainer.max_epochs=5",
    "callbacks.early_stopping.patience=100",
]


def run(root: Path, delay: float | None, sig: int) -> tuple[int, bool]:
    """(exit code, whether it was killed) of one attempt in `root`."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resvae.cli.train", *ARGS],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    if delay is not None:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            killed = True
    return proc.wait(timeout=600), killed


def records(root: Path) -> tuple[dict[tuple[str, str], list[str]], dict, list[str]]:
    (summary_path,) = root.glob("outputs/**/summary.json")
    folder = summary_path.parent
    pairs: dict[tuple[str, str], list[str]] = {}
    with open(folder / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            where = row.get("epoch") or f"step {row.get('step')}"
            for key, value in row.items():
                if key not in ("epoch", "step") and value != "":
                    pairs.setdefault((where, key), []).append(value)
    leftovers = [str(p) for p in folder.rglob(".*.tmp")]
    return pairs, json.loads(summary_path.read_text()), leftovers


def campaign(rng: random.Random, attempts: int, sigterm: float, workdir: Path) -> dict:
    reference = workdir / "reference"
    reference.mkdir()
    started = time.time()
    code, _ = run(reference, None, signal.SIGKILL)
    assert code == 0, "the reference run failed"
    wall = time.time() - started
    want, _, _ = records(reference)

    root = workdir / "killed"
    root.mkdir()
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    for i in range(attempts + 1):
        sig = signal.SIGTERM if rng.random() < sigterm else signal.SIGKILL
        delay = rng.uniform(0.2, wall) if i < attempts else None
        code, killed = run(root, delay, sig)
        kills[sig.name] += killed
        if code == 0 and not killed:
            break
    have, summary, leftovers = records(root)
    duplicated = sorted(k for k, v in have.items() if len(v) > 1)
    lost = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(
        k
        for k in set(want) & set(have)
        if abs(float(have[k][0]) - float(want[k][0])) > 1e-4 * abs(float(want[k][0])) + 1e-6
    )
    return {
        "kills": kills,
        "duplicated": duplicated,
        "lost": lost,
        "extra": extra,
        "differ": differ,
        "status": summary.get("status"),
        "leftovers": leftovers,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--campaigns", type=int, default=6)
    p.add_argument("--attempts", type=int, default=4, help="killed attempts per campaign")
    p.add_argument("--sigterm", type=float, default=0.3, help="share of kills that are SIGTERM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="more resvae-train overrides, e.g. model=hvae")
    args = p.parse_args(argv)
    ARGS.extend(args.overrides)
    rng = random.Random(args.seed)
    totals = {"SIGKILL": 0, "SIGTERM": 0, "duplicated": 0, "lost": 0, "bad": 0}
    for n in range(args.campaigns):
        with tempfile.TemporaryDirectory(prefix="resvae-campaign-") as tmp:
            result = campaign(rng, args.attempts, args.sigterm, Path(tmp))
        problems = [result[k] for k in ("duplicated", "lost", "extra", "differ", "leftovers")]
        ok = not any(problems) and result["status"] == "finished"
        totals["SIGKILL"] += result["kills"]["SIGKILL"]
        totals["SIGTERM"] += result["kills"]["SIGTERM"]
        totals["duplicated"] += len(result["duplicated"])
        totals["lost"] += len(result["lost"])
        totals["bad"] += not ok
        print(f"campaign {n + 1}: {'ok' if ok else 'FAILED'} {json.dumps(result)}", flush=True)
    print(
        f"{args.campaigns} campaigns, {totals['SIGKILL']} SIGKILL + {totals['SIGTERM']} SIGTERM: "
        f"{totals['duplicated']} rows duplicated, {totals['lost']} lost, {totals['bad']} campaign(s) failed"
    )
    return 1 if totals["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
