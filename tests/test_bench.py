"""resvae-bench runs on CPU with tiny sizes (its GPU numbers are measured on a GPU, not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resvae.bench import format_table, main, parse_args


@pytest.mark.slow
def test_bench_times_the_bare_loop_and_the_real_training_app(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    main(
        [
            "experiment=smoke",
            "model.arch.width=2",
            *("--device", "cpu", "--depth", "28", "--batch", "4", "--steps", "3", "--warmup", "1"),
            *("--loops", "bare", "captured", "lightning", "--val-images", "16", "--json", str(out)),
        ]
    )
    rows = json.loads(out.read_text())
    by_loop = {r["loop"]: r for r in rows}
    assert set(by_loop) == {"bare", "lightning", "data_path"}  # captured: skipped without CUDA
    for loop in ("bare", "lightning"):
        row = by_loop[loop]
        assert row["depth"] == 28 and row["batch"] == 4 and row["img_s"] > 0 and row["gflop_img"] > 0
        assert row["ms_step"] > 0
    assert by_loop["bare"]["ms_step"] == pytest.approx(1e3 * 4 / by_loop["bare"]["img_s"], rel=0.01)
    assert by_loop["bare"]["epoch_50k_s"] == pytest.approx(50_000 / by_loop["bare"]["img_s"], rel=0.01)
    # the real loop's epoch includes validation (scaled to 10,000 images) and checkpoint waits
    lightning = by_loop["lightning"]
    assert lightning["epoch_50k_s"] > 50_000 / lightning["img_s"] and 0 < lightning["val_fraction"] < 1
    assert lightning["warmup_s"] > 0 and lightning["captured"] is False
    assert by_loop["data_path"]["img_s"] > 0
    printed = capsys.readouterr().out
    assert "| depth | batch | loop |" in printed and "lightning / bare" in printed
    assert "captured: skipped (CUDA graphs need a GPU)" in printed


def test_bench_flops_grow_with_depth_and_table_formats() -> None:
    import torch

    from resvae.bench import build_model, compose_config, train_gflop_per_image

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


def test_bench_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--batch", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0"])
