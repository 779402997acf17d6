"""`resvae-bench --acceptance`: issue 17's GPU targets in one command on one GPU (under 10 minutes).

1. Lightning >= 2.6 (the background checkpoint writer relies on it cloning tensors before it
   hands them to the writer thread); otherwise one line and exit 2.
2. The GPU tests (`pytest -m gpu` of GPU_TESTS: captured == eager, a GPU run's summary) in a
   subprocess (with `--cases`, only when they name `gpu-tests`).
3. The rows of CASES, then one table of TARGETS with the numbers beside them, each PASS, FAIL or
   not run (and why). Rows that would start after the time budget are not run.

Without CUDA (or with --device cpu) it runs a tiny version of itself: the same cases at width 2
on 8x8 images, batch 4, a few steps; the GPU rows and every target are "not run (no CUDA)".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from resvae.cli.bench.suite import LOOPS, Settings, measure
from resvae.cli.bench.table import by_case, ratio

REPO = Path(__file__).resolve().parents[3]
MIN_LIGHTNING = (2, 6)
GPU_BUDGET_S = 540.0  # no row starts after this; leaves a minute of the 10 for the last row
SEED = ("experiment=seed_depth_sweep",)  # the study's protocol: batch 25, float32, no TF32
KERAS_FP32 = (*SEED, "model=keras2018", "trainer.precision=32-true", "matmul_precision=highest")
DEPTH_SWEEP = ("experiment=depth_sweep",)  # the suite's sweep: bf16 on the GPU
TINY = ("model.arch.width=2", "model.arch.image_size=8", "data.image_size=8")
TINY_BATCH, TINY_STEPS, TINY_WARMUP, TINY_VAL = 4, 2, 1, 16
REAL_AND_STEPS = ("bare", "step", "step-captured", "lightning-captured")
GPU_TESTS = ("tests/models/test_step.py", "tests/run/test_reliability.py")  # the modules with gpu tests
GPU_TESTS_CASE = "gpu-tests"  # their --cases name
GPU_TESTS_CHECK = f"GPU tests (pytest -m gpu {' '.join(GPU_TESTS)})"


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    depth: int
    batch: int  # on a GPU
    loops: tuple[str, ...]
    steps: int  # timed steps on a GPU: fewer where one step is long (the 10-minute budget)

    @property
    def label(self) -> str:
        return f"{self.name} d{self.depth} b{self.batch}"


CASES = (  # in order of what the budget must not cut: the slowest case last
    Case("vae", (*SEED, "model=vae"), 28, 25, LOOPS, 500),
    Case("vae", (*SEED, "model=vae"), 100, 25, REAL_AND_STEPS, 500),
    Case("depth_sweep", DEPTH_SWEEP, 28, 1024, REAL_AND_STEPS, 100),
    Case("depth_sweep", DEPTH_SWEEP, 100, 1024, REAL_AND_STEPS, 100),
    Case("keras2018", KERAS_FP32, 28, 25, ("step", "step-captured", "lightning-captured"), 500),
    Case("keras2018", KERAS_FP32, 100, 25, ("step", "step-captured", "lightning-captured"), 200),
)


@dataclass(frozen=True)
class Target:
    case: str  # a Case.label
    a: str  # the loop measured
    b: str | None  # the loop it is compared with (img/s ratio), or None: a's val_fraction
    bound: float  # ratio >= bound; val_fraction < bound

    @property
    def what(self) -> str:
        return f"{self.a} / {self.b} img/s" if self.b else f"{self.a} validation + checkpoints / epoch"

    @property
    def wanted(self) -> str:
        return f">= {self.bound:g}x" if self.b else f"< {self.bound:.0%}"


TARGETS = (
    Target("vae d28 b25", "lightning-captured", "step", 3.5),  # captured real loop vs the eager step
    Target("vae d100 b25", "lightning-captured", "step", 3.0),
    Target("keras2018 d28 b25", "lightning-captured", "step", 1.3),
    Target("keras2018 d100 b25", "lightning-captured", "step", 1.3),
    Target("depth_sweep d28 b1024", "lightning-captured", "bare", 1.1),
    Target("depth_sweep d28 b1024", "lightning-captured", "step-captured", 0.9),
    Target("depth_sweep d100 b1024", "lightning-captured", "bare", 1.1),
    Target("depth_sweep d100 b1024", "lightning-captured", "step-captured", 0.9),
    Target("depth_sweep d100 b1024", "lightning-captured", None, 0.10),
)
# docs/reference-study.md, Table 1 and the notebooks' `Elapsed:` (GTX 1070, 50,000 images an epoch)
STUDY_HOURS = {
    28: "206 (79.27 h for 384 epochs)",
    100: "unknown (164.75 h; epochs not printed)",
}


def lightning_problem(version: str | None = None) -> str | None:
    """One line when the installed Lightning (or `version`) is older than 2.6, else None."""
    version = version or L.__version__
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and (int(found.group(1)), int(found.group(2))) >= MIN_LIGHTNING:
        return None
    return (
        f"Lightning {version} is older than 2.6: the background checkpoint writer needs 2.6+, which "
        "clones tensors before handing them to the writer thread; install lightning>=2.6"
    )


def gpu_tests(timeout_s: float) -> dict[str, Any]:
    """`pytest -m gpu` of GPU_TESTS (they skip without CUDA): PASS, FAIL or not run."""
    check: dict[str, Any] = {"check": GPU_TESTS_CHECK}
    if not all((REPO / path).is_file() for path in GPU_TESTS):
        return {**check, "status": "not run (tests/ not found: run from the source checkout)"}
    command = [sys.executable, "-m", "pytest", *GPU_TESTS, "-m", "gpu", "-q", "-rfEs"]
    command += ["--tb=line", "-o", "addopts=", "-p", "no:cacheprovider"]  # one process; no xdist needed
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**check, "status": f"FAIL (ran past {timeout_s:.0f} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    last = lines[-1].strip("= ") if lines else proc.stderr.strip()[-200:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    check["measured"] = last
    # the failing tests and their assertion lines, so that the report says why without a rerun
    failures = [line for line in lines if line.startswith("FAILED") or re.match(r"\S+:\d+: [\w.]+: ", line)]
    if failures:
        check["failures"] = failures[:20]
    if "No module named pytest" in proc.stderr:
        return {**check, "status": "not run (pytest is not installed)"}
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        return {**check, "status": "FAIL"}
    if counts.get("passed"):
        return {**check, "status": "PASS"}
    reason = "no CUDA" if not torch.cuda.is_available() else "every test skipped"
    return {**check, "status": f"not run ({reason})"}


def chosen(case: Case, names: list[str] | None) -> bool:
    return not names or case.name in names or case.label in names


def unknown_cases(names: list[str]) -> str | None:
    """One line naming the cases that exist, when a name in `names` is none of them."""
    known = {c.name for c in CASES} | {c.label for c in CASES} | {GPU_TESTS_CASE}
    wrong = [n for n in names if n not in known]
    if not wrong:
        return None
    labels = ", ".join(repr(c.label) for c in CASES)
    return (
        f"--cases: no case {', '.join(map(repr, wrong))}; the cases are {labels} (or their names) "
        f"and {GPU_TESTS_CASE!r} (the GPU tests)"
    )


def run(
    settings: Settings, extra: list[str], steps: int | None, budget_s: float | None,
    cases: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The checks, the rows of the chosen `cases` (default all) and the targets; `extra`
    overrides go to every case."""
    start = time.monotonic()
    gpu = settings.device.type == "cuda"
    budget = budget_s if budget_s is not None else (GPU_BUDGET_S if gpu else None)
    settings.deadline = None if budget is None else start + budget
    checks = [{"check": "Lightning >= 2.6", "measured": L.__version__, "status": "PASS"}]
    if not cases or GPU_TESTS_CASE in cases:
        checks.append(gpu_tests(timeout_s=300.0))
        print(json.dumps(checks[-1]), flush=True)  # now, as each row is: a log cut off later keeps it
    else:
        checks.append({"check": GPU_TESTS_CHECK, "status": f"not run (--cases without {GPU_TESTS_CASE!r})"})
    selected = [c for c in CASES if chosen(c, cases)]
    rows = []
    for case in selected:
        overrides = [*case.overrides, *(() if gpu else TINY), *extra]
        batch = case.batch if gpu else TINY_BATCH
        n = steps or (case.steps if gpu else TINY_STEPS)
        rows += measure(overrides, case.depth, batch, case.loops, settings, case=case.label, steps=n)
    labels = {c.label for c in selected}
    results = [*checks, *(evaluate(t, rows) if t.case in labels else skipped(t) for t in TARGETS)]
    return {"acceptance": results, "rows": rows, "seconds": round(time.monotonic() - start, 1), "gpu": gpu}


def skipped(target: Target) -> dict[str, Any]:
    return {"check": target.what, "case": target.case, "target": target.wanted, "status": "not run (--cases)"}


def evaluate(target: Target, rows: list[dict[str, Any]]) -> dict[str, Any]:
    got = next((loops for (case, _, _), loops in by_case(rows).items() if case == target.case), {})
    result: dict[str, Any] = {"check": target.what, "case": target.case, "target": target.wanted}
    if target.case.startswith("keras2018"):
        result["study"] = STUDY_HOURS.get(int(target.case.split()[1][1:]), "unknown")
    missing = [loop for loop in (target.a, target.b) if loop and "img_s" not in got.get(loop, {})]
    if missing:
        reason = got.get(missing[0], {}).get("not_run", "not measured")
        return {**result, "status": f"not run ({missing[0]}: {reason})"}
    a = got[target.a]
    if target.b is None:
        value = a.get("val_fraction")
        if value is None:
            return {**result, "status": "not run (no epoch boundary measured)"}
        return {**result, "measured": f"{value:.1%}", "status": "PASS" if value < target.bound else "FAIL"}
    value = ratio(got, target.a, target.b) or 0.0
    measured = f"{value:.2f}x ({a['img_s']:,.0f} / {got[target.b]['img_s']:,.0f} img/s)"
    if "study" in result and a.get("epoch_50k_s"):
        measured += f"; {a['epoch_50k_s'] * 1000 / 3600:,.1f} h / 1,000 epochs"
    return {**result, "measured": measured, "status": "PASS" if value >= target.bound else "FAIL"}


def format_acceptance(report: dict[str, Any]) -> str:
    head = ("check", "case", "measured", "target", "study GTX 1070 h / 1,000 epochs", "status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["acceptance"]:
        cells = (
            r.get("check"),
            r.get("case"),
            r.get("measured"),
            r.get("target"),
            r.get("study"),
            r["status"],
        )
        lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    for r in report["acceptance"]:
        lines += [f"  {r['check']}: {failure}" for failure in r.get("failures", [])]
    if not report["gpu"]:
        lines.append(f"\ntiny CPU version (width 2, 8x8 images, batch {TINY_BATCH}): GPU rows not run")
    lines.append(f"acceptance took {report['seconds']:.0f} s")
    return "\n".join(lines)


def failed(report: dict[str, Any]) -> bool:
    return any(r["status"].startswith("FAIL") for r in report["acceptance"])
