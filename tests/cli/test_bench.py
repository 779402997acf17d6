"""resvae-bench runs on CPU with tiny sizes (its GPU numbers are measured on a GPU, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from resvae.cli.bench import acceptance, format_table, main, parse_args
from resvae.cli.bench.common import Numerics, compose_config, resolve_numerics
from resvae.cli.bench.peaks import gpu_model, mfu, peak_tflops
from resvae.cli.bench.real_loop import figures

TINY = ["experiment=smoke", "model.arch.width=2", "model.arch.image_size=8", "data.image_size=8"]


@pytest.mark.slow
def test_every_row_times_the_same_window_and_gpu_rows_say_why_not(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    main([*TINY, "--device", "cpu", "--batch", "4", "--steps", "3", "--warmup", "2", "--val-images", "16",
          "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    by_loop = {r["loop"]: r for r in rows}
    assert set(by_loop) == {"bare", "step", "step-captured", "lightning", "lightning-captured", "data_path"}
    for loop in ("step-captured", "lightning-captured"):
        assert by_loop[loop]["not_run"] == "no CUDA" and "img_s" not in by_loop[loop]
    for loop in ("bare", "step", "lightning"):
        row = by_loop[loop]
        assert (row["steps"], row["warmup"], row["batch"], row["depth"]) == (3, 2, 4, 28)
        assert row["img_s"] > 0 and row["gflop_img"] > 0 and row["warmup_s"] > 0
        assert row["ms_step"] == pytest.approx(1e3 * 4 / row["img_s"], rel=0.01)
        assert row["mfu"] is None and row["math"] == "fp32"  # no peak for a CPU: no MFU
    assert by_loop["bare"]["epoch_50k_s"] == pytest.approx(50_000 / by_loop["bare"]["img_s"], rel=0.01)
    # the real loop's epoch: its window's training plus the synchronised epoch boundary
    lightning = by_loop["lightning"]
    assert lightning["epoch_50k_s"] > 50_000 / lightning["img_s"] and 0 < lightning["val_fraction"] < 1
    assert (
        lightning["boundary_s"] > 0
        and lightning["captured"] is False
        and lightning["compile_eval_s"] is None  # no compiled validation on a CPU
        and lightning["float32"] == {"matmul": "tf32", "conv": "tf32"}
    )
    printed = capsys.readouterr().out
    assert "| depth | batch | loop |" in printed and "lightning / step = " in printed
    assert "step / bare = " in printed and "| step-captured | fp32 | not run (no CUDA) |" in printed


@pytest.mark.slow
def test_acceptance_on_a_cpu_runs_a_tiny_version_and_marks_gpu_rows_not_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "acceptance.json"
    with pytest.raises(SystemExit) as exit_:
        main(["--acceptance", "--device", "cpu", "--json", str(out)])
    assert exit_.value.code == 0  # nothing failed: what needs a GPU is "not run"
    report = json.loads(out.read_text())
    status = {(r["check"], r.get("case")): r["status"] for r in report["acceptance"]}
    assert status[("Lightning >= 2.6", None)] == "PASS"
    assert status[(acceptance.GPU_TESTS_CHECK, None)] == "not run (no CUDA)"
    targets = [r for r in report["acceptance"] if r.get("case")]
    assert len(targets) == len(acceptance.TARGETS) == 9
    assert all(r["status"] == "not run (lightning-captured: no CUDA)" for r in targets)
    rows = report["rows"]
    assert {r["case"] for r in rows} == {c.label for c in acceptance.CASES}
    for r in rows:
        if r["loop"].endswith("captured"):
            assert r["not_run"] == "no CUDA"
        else:
            assert r["img_s"] > 0 and r["batch"] == acceptance.TINY_BATCH, r
    keras = [r for r in rows if r["case"].startswith("keras2018")]
    assert keras and all(r["precision"] == "32-true" and r["math"] == "fp32" for r in keras)
    printed = capsys.readouterr().out
    first = json.loads(next(line for line in printed.splitlines() if line.startswith("{")))
    assert first["check"] == acceptance.GPU_TESTS_CHECK  # printed before the rows: a cut-off log keeps it
    assert "| check | case | measured | target | study GTX 1070 h / 1,000 epochs | status |" in printed
    assert "206 (79.27 h for 384 epochs)" in printed


def _rows(case: str, **img_s: float) -> list[dict]:
    depth, batch = int(case.split()[1][1:]), int(case.split()[2][1:])
    return [
        {
            "case": case,
            "depth": depth,
            "batch": batch,
            "loop": loop.replace("_", "-"),
            "img_s": v,
            "ms_step": 1.0,
        }
        for loop, v in img_s.items()
    ]


def test_targets_pass_fail_or_say_why_they_did_not_run() -> None:
    rows = _rows("vae d28 b25", step=100.0, lightning_captured=400.0)
    rows += _rows("vae d100 b25", step=100.0, lightning_captured=250.0)
    rows += _rows("keras2018 d28 b25", step=100.0, lightning_captured=140.0)
    rows[-1]["epoch_50k_s"] = 36.0
    rows += _rows("depth_sweep d100 b1024", bare=100.0, step_captured=100.0, lightning_captured=120.0)
    rows[-1]["val_fraction"] = 0.2
    rows.append(
        {"case": "keras2018 d100 b25", "depth": 100, "batch": 25, "loop": "step", "not_run": "time budget"}
    )
    results = {(t.case, t.b): acceptance.evaluate(t, rows) for t in acceptance.TARGETS}
    assert results[("vae d28 b25", "step")]["status"] == "PASS"
    assert results[("vae d28 b25", "step")]["measured"].startswith("4.00x")
    assert results[("vae d100 b25", "step")]["status"] == "FAIL"  # 2.5x < 3x
    keras = results[("keras2018 d28 b25", "step")]
    assert keras["status"] == "PASS" and "10.0 h / 1,000 epochs" in keras["measured"]
    assert results[("keras2018 d100 b25", "step")]["status"] == "not run (lightning-captured: not measured)"
    assert results[("depth_sweep d100 b1024", "bare")]["status"] == "PASS"
    assert results[("depth_sweep d100 b1024", None)]["status"] == "FAIL"  # 20% of an epoch
    assert results[("depth_sweep d28 b1024", "bare")]["status"].startswith("not run")
    assert acceptance.failed({"acceptance": list(results.values())})


def test_the_real_loop_scales_validation_to_the_test_set_and_keeps_the_rest() -> None:
    timing = {
        "window_seconds": 2.0, "window_images": 200, "window_steps": 10, "warmup_seconds": 5.0,
        "epochs": [
            {"epoch": 0, "val_seconds": 9.0, "boundary_seconds": 20.0},  # compiles: not used
            {"epoch": 1, "val_seconds": 1.0, "boundary_seconds": 3.0},
        ],
    }  # fmt: skip
    row = figures(timing, {"epochs_timed": [{"checkpoint_seconds": 0.5}], "images_per_second": 150.0}, 1000)
    assert row["img_s"] == 100.0 and row["ms_step"] == 200.0
    # 500 s of training at 100 img/s; validation 1 s on 1,000 images -> 10 s; 2 s else
    assert row["epoch_50k_s"] == pytest.approx(512.0)
    assert row["val_fraction"] == pytest.approx(12.0 / 512.0)
    assert row["app_img_s"] == 150.0 and row["checkpoint_s"] == 0.5


def test_mfu_uses_the_dense_peak_of_the_precision_that_ran() -> None:
    assert gpu_model("NVIDIA H100 80GB HBM3") == "H100 SXM" and gpu_model("NVIDIA H200") == "H200 SXM"
    assert [peak_tflops("NVIDIA H200", m) for m in ("bf16", "tf32", "fp32")] == [989.0, 494.0, 67.0]
    assert [peak_tflops("NVIDIA A100-SXM4-80GB", m) for m in ("bf16", "tf32", "fp32")] == [312.0, 156.0, 19.5]
    for unknown in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "Tesla V100-SXM2-16GB", "cpu"):
        assert peak_tflops(unknown, "bf16") is None
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp32", given=15.7) == 15.7
    assert mfu(1000.0, 10.0, 100.0) == pytest.approx(0.1) and mfu(1000.0, 10.0, None) is None
    assert Numerics("bf16-mixed", tf32=True).math == "bf16"
    assert Numerics("32-true", tf32=True).math == "tf32" and Numerics("32-true", tf32=False).math == "fp32"


def test_matmul_precision_highest_turns_off_tf32_for_convolutions_too() -> None:
    before = (torch.backends.cudnn.conv.fp32_precision, torch.get_float32_matmul_precision())
    try:
        cfg = compose_config(["experiment=seed_depth_sweep", "model=keras2018", "data=synthetic"])
        numerics = resolve_numerics(cfg, "config", torch.device("cpu"))
        assert (
            numerics == Numerics("32-true", tf32=False) and torch.backends.cudnn.conv.fp32_precision == "ieee"
        )
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.conv.fp32_precision = before[0]
        torch.set_float32_matmul_precision(before[1])


def test_a_mistyped_config_key_is_one_line_and_exit_2() -> None:
    script = Path(sys.executable).parent / "resvae-bench"  # the console script, as users call it
    proc = subprocess.run(
        [str(script), "model.arch.dept=28", "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resvae-bench: error: model.arch.dept is not a key")
    assert "model.arch.depth" in lines[0] and proc.stdout == ""


@pytest.mark.slow
def test_acceptance_runs_the_chosen_cases_and_keeps_the_real_loops_folders(tmp_path: Path, capsys) -> None:
    out, runs = tmp_path / "acceptance.json", tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        main(["--acceptance", "--device", "cpu", "--cases", "vae d28 b25", "--keep-runs", str(runs),
              "--json", str(out)])  # fmt: skip
    assert exit_.value.code == 0
    report = json.loads(out.read_text())
    assert {r["case"] for r in report["rows"]} == {"vae d28 b25"}
    targets = {r["case"]: r["status"] for r in report["acceptance"] if r.get("case")}
    assert targets["vae d28 b25"] == "not run (lightning-captured: no CUDA)"
    assert targets["keras2018 d28 b25"] == targets["depth_sweep d100 b1024"] == "not run (--cases)"
    checks = {r["check"]: r["status"] for r in report["acceptance"] if not r.get("case")}
    assert checks[acceptance.GPU_TESTS_CHECK] == "not run (--cases without 'gpu-tests')"
    (summary,) = runs.glob("real-*/**/summary.json")  # the one real loop that runs on a CPU
    record = json.loads(summary.read_text())
    assert record["status"] == "finished" and record["compile_eval_first_call_seconds"] is None
    assert (summary.parent / "train.log").is_file() and (summary.parent / "metrics.csv").is_file()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [json.loads(line)["loop"] for line in printed] == list(acceptance.CASES[0].loops)


def test_an_unknown_acceptance_case_is_one_line_naming_the_cases(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--acceptance", "--device", "cpu", "--cases", "vae d29 b25"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "'gpu-tests' (the GPU tests)" in err[0]
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--cases", "vae"])  # a plain benchmark has no cases
    assert exit_.value.code == 2 and "--cases needs --acceptance" in capsys.readouterr().err
    assert err[0].startswith("resvae-bench: error: --cases: no case 'vae d29 b25'; the cases are ")


def test_failing_gpu_tests_are_reported_with_their_assertions(monkeypatch) -> None:
    out = (  # what pytest -q -rfEs --tb=line prints
        "..FF\n/repo/tests/models/test_step.py:268: AssertionError: captured vs eager: (0.01, 'w')\n"
        "/repo/tests/models/test_step.py:270: torch.OutOfMemoryError: CUDA out of memory\n"
        "=========================== short test summary info ============================\n"
        "FAILED tests/models/test_step.py::test_a_captured_step_trains_like_the_eager_one[plateau] - "
        "AssertionError: captured vs eager: (...\n"
        "2 failed, 2 passed, 5 deselected in 14.44s\n"
    )
    done = subprocess.CompletedProcess([], returncode=1, stdout=out, stderr="")
    monkeypatch.setattr(acceptance.subprocess, "run", lambda *a, **k: done)
    check = acceptance.gpu_tests(timeout_s=10)
    assert check["status"] == "FAIL" and check["measured"] == "2 failed, 2 passed, 5 deselected in 14.44s"
    assert check["failures"] == [
        "/repo/tests/models/test_step.py:268: AssertionError: captured vs eager: (0.01, 'w')",
        "/repo/tests/models/test_step.py:270: torch.OutOfMemoryError: CUDA out of memory",
        "FAILED tests/models/test_step.py::test_a_captured_step_trains_like_the_eager_one[plateau] - "
        "AssertionError: captured vs eager: (...",
    ]
    table = acceptance.format_acceptance({"acceptance": [check], "gpu": True, "seconds": 1.0})
    assert "captured vs eager: (0.01, 'w')" in table


def test_an_old_lightning_is_refused_in_one_line(monkeypatch, capsys) -> None:
    assert acceptance.lightning_problem("2.6.0") is None and acceptance.lightning_problem("3.0.1") is None
    monkeypatch.setattr(L, "__version__", "2.5.3")
    with pytest.raises(SystemExit) as exit_:
        main(["--acceptance", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith("resvae-bench: error: Lightning 2.5.3 is older than 2.6")


def test_bench_flops_grow_with_depth_and_table_formats() -> None:
    from resvae.cli.bench import build_model, train_gflop_per_image

    cpu = torch.device("cpu")
    flops = [
        train_gflop_per_image(
            build_model(compose_config(["model.arch.width=2", f"model.arch.depth={d}"]), cpu), cpu
        )
        for d in (28, 40)
    ]
    assert 0 < flops[0] < flops[1]
    table = format_table(
        [
            {"depth": 28, "batch": 4, "loop": "bare", "img_s": 10.0, "ms_step": 400.0},
            {"depth": 28, "batch": 4, "loop": "lightning", "img_s": 9.0, "ms_step": 444.4},
        ]
    )
    assert "lightning / bare = 0.90x img/s, 1.111x ms/step" in table


@pytest.mark.parametrize(
    "argv",
    [["--batch", "0"], ["--steps", "0"], ["--warmup", "0"], ["--loops", "captured"], ["--repeat", "0"]],
)
def test_bench_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2


def test_overrides_and_options_may_be_mixed() -> None:
    args = parse_args(["experiment=smoke", "--steps", "3", "model.arch.width=2", "--device", "cpu"])
    assert args.overrides == ["experiment=smoke", "model.arch.width=2"] and args.steps == 3
