"""resvae-report on a hand-made sweep folder: table, aggregates, plots, HTML (also in a browser), W&B."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from resvae.sweep import plots, report
from resvae.sweep.runs import collect_runs
from resvae.sweep.tables import CSV_FIELDS, table_rows
from resvae.sweep.varied import parse_value, short_names, varied_params, x_axis
from tests.helpers.browser import VIEWPORT, open_in_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BY_DEPTH = ("val_loss_vs_depth", "test_bpd_vs_depth", "train_hours_vs_depth", "images_per_second_vs_depth")
PLOTS = 1 + len(BY_DEPTH)  # with the validation curves

# depth, seed, min_val_loss (in summary.json, or only in metrics.csv), train_seconds, test_bpd
FINISHED = {
    "model.depth=28,seed=0": (28, 0, 100.0, 3600.0, 3.5),
    "model.depth=28,seed=1": (28, 1, 102.0, 5400.0, 3.7),
    "model.depth=40,seed=0": (40, 0, 90.0, 7200.0, 3.4),
    "model.depth=40,seed=1": (40, 1, 93.0, 9000.0, 3.6),
}
FAILED = "model.depth=70,seed=0"
FAILED_ERROR = "RuntimeError: CUDA out of memory <b>&</b>"
MALFORMED = "model.depth=100,seed=0"
NO_SUMMARY = "model.depth=100,seed=1"
WITH_EVAL = "model.depth=40,seed=1"
EVAL = {"bpd": 3.55, "bpd_se": 0.01, "bpd_iw": 3.45, "bpd_iw_se": 0.01, "active_units": 17, "split": "test"}


def write_grid(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (34, 34), color).save(path)


def write_metrics(path: Path, val_losses: list[float]) -> None:
    """A wide metrics.csv as the CSV logger writes it: train and val rows apart, empty cells."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["epoch", "lr-Adam", "step", "train/loss", "val/bpd", "val/loss"]
        )
        writer.writeheader()
        for epoch, val in enumerate(val_losses):
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "lr-Adam": 1e-3})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "train/loss": val - 5, "val/loss": val})


def make_sweep(root: Path) -> Path:
    sweep = root / "multirun"
    for name, (depth, seed, min_val, seconds, bpd) in FINISHED.items():
        run = sweep / name
        run.mkdir(parents=True)
        (run / ".hydra").mkdir()
        summary = {
            "status": "finished",
            "name": "depth_sweep",
            "run": name,
            "network": "resvae",
            "depth": depth,
            "layers": depth,
            "params": 1_000_000 * depth,
            "epochs": 3,
            "stopped_early": False,
            "train_seconds": seconds,
            "images_per_second": 1000.0 + depth,
            "test_bpd": bpd,
            "bpd_is_likelihood": depth == 40,  # depth 28: the study's Bernoulli loss
            "seed": seed,
        }
        if depth == 28:
            summary["min_train_loss"] = min_val - 10
            summary["min_val_loss"] = min_val  # depth 40: from metrics.csv
        (run / "summary.json").write_text(json.dumps(summary))
        write_metrics(run / "metrics.csv", [min_val + 8, min_val + 3, min_val])
        for epoch in (0, 2, 1):
            write_grid(run / "samples" / f"epoch_{epoch:03d}.png", (80 * epoch, 0, 0))
            write_grid(run / "recon" / f"epoch_{epoch:03d}.png", (0, 80 * epoch, 0))
    (sweep / WITH_EVAL / "eval.json").write_text(json.dumps(EVAL))
    failed = sweep / FAILED
    failed.mkdir()
    (failed / "summary.json").write_text(
        json.dumps({"status": "failed", "error": FAILED_ERROR, "depth": 70, "seed": 0, "epochs": 1})
    )
    write_metrics(failed / "metrics.csv", [120.0])
    write_grid(failed / "samples" / "epoch_000.png", (0, 0, 200))
    (sweep / MALFORMED).mkdir()
    (sweep / MALFORMED / "summary.json").write_text('{"status": ')
    (sweep / NO_SUMMARY / ".hydra").mkdir(parents=True)
    (sweep / "not_a_job").mkdir()  # no summary.json, no .hydra/: not a run
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = make_sweep(tmp_path_factory.mktemp("report"))
    assert report.write_report(sweep) == sweep / "report.html"
    return sweep


def csv_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_collect_runs_reads_every_job_and_survives_bad_ones(sweep: Path) -> None:
    runs = {r.name: r for r in collect_runs(sweep)}
    assert set(runs) == {*FINISHED, FAILED, MALFORMED, NO_SUMMARY}
    assert runs[MALFORMED].status == "broken"
    assert runs[MALFORMED].broken == "summary.json: Expecting value: line 1 column 12"
    assert runs[NO_SUMMARY].broken.startswith("summary.json: missing")
    assert runs[FAILED].error == FAILED_ERROR
    assert runs[WITH_EVAL].eval == EVAL
    run = runs["model.depth=28,seed=0"]
    assert run.val_curve == [(0.0, 108.0), (1.0, 103.0), (2.0, 100.0)]
    assert run.sample_png.name == run.recon_png.name == "epoch_002.png"  # the latest, not the last listed


def test_table_rows_and_aggregates_in_csv(sweep: Path) -> None:
    rows = csv_rows(sweep)
    runs = [r for r in rows if r["kind"] == "run"]
    assert [r["run"] for r in runs] == [*FINISHED, FAILED, MALFORMED, NO_SUMMARY]  # depth, then seed
    means = {int(r["depth"]): r for r in rows if r["kind"] == "mean"}
    assert set(means) == {28, 40}  # depth 70 has one run, depth 100 none that finished
    order = [r["run"] for r in rows]
    assert order.index("model.depth=28,seed=1") + 1 == order.index(means[28]["run"])  # after its runs
    for depth, mean in means.items():
        members = [v for v in FINISHED.values() if v[0] == depth]
        assert mean["n_seeds"] == "2"
        for key, values in (
            ("min_val_loss", [v[2] for v in members]),
            ("train_hours", [v[3] / 3600 for v in members]),
            ("images_per_second", [1000.0 + depth] * 2),
        ):
            assert float(mean[key]) == pytest.approx(statistics.mean(values)), key
            assert float(mean[f"{key}_std"]) == pytest.approx(statistics.stdev(values)), key
    by_run = {r["run"]: r for r in runs}
    assert float(by_run["model.depth=40,seed=0"]["min_val_loss"]) == 90.0  # from metrics.csv
    assert float(by_run["model.depth=40,seed=0"]["min_train_loss"]) == 85.0
    assert float(by_run[WITH_EVAL]["test_bpd"]) == EVAL["bpd"]  # eval.json preferred to summary.json
    assert float(by_run[WITH_EVAL]["test_bpd_iw"]) == EVAL["bpd_iw"]
    assert by_run[WITH_EVAL]["active_units"] == "17"
    assert float(means[40]["test_bpd"]) == pytest.approx((3.4 + 3.55) / 2)
    assert by_run[FAILED]["status"] == "failed" and by_run[FAILED]["error"] == FAILED_ERROR
    assert by_run[MALFORMED]["status"] == "broken"
    assert by_run[MALFORMED]["error"].startswith("summary.json: Expecting value")


def test_markdown_table_and_problems(sweep: Path) -> None:
    md = (sweep / "report.md").read_text()
    lines = md.splitlines()
    for name in [*FINISHED, FAILED, MALFORMED, NO_SUMMARY]:
        assert any(line.startswith(f"| {name} |") for line in lines), name
    mean28 = next(line for line in lines if line.startswith("| **depth 28"))
    assert "**101 ± 1.4142**" in mean28  # min val loss: mean ± sample std
    assert "**1.250 ± 0.354**" in mean28  # training hours
    assert "**n=2**" in mean28
    assert "3.600 ± 0.141†" in mean28  # depth 28's bits/dim is no likelihood: flagged
    mean40 = next(line for line in lines if line.startswith("| **depth 40"))
    assert "**91.5 ± 2.1213**" in mean40 and "†" not in mean40
    assert "† not a likelihood" in md
    problems = md.split("## Failed and broken runs", 1)[1]
    assert f"`{FAILED}`: failed: {FAILED_ERROR}" in problems
    assert f"`{MALFORMED}`: broken: summary.json: Expecting value: line 1 column 12" in problems
    assert f"`{NO_SUMMARY}`: broken: summary.json: missing" in problems


def test_plots_are_valid_pngs(sweep: Path) -> None:
    assert sorted(p.stem for p in (sweep / "report").glob("*.png")) == sorted(["val_loss_curves", *BY_DEPTH])
    for stem in ("val_loss_curves", *BY_DEPTH):
        path = sweep / "report" / f"{stem}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC, stem
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200
    assert not list((sweep / "report").glob("*.tmp"))  # atomic writes left no temporaries


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_html_links_only_existing_relative_files(sweep: Path) -> None:
    page = (sweep / "report.html").read_text()
    parser = Links()
    parser.feed(page)
    files = [u for u in parser.urls if not u.startswith(("#", "data:"))]
    # the plots, each finished run's grids, the failed one's samples
    assert len(files) == PLOTS + 2 * len(FINISHED) + 1
    for url in files:
        assert not urlparse(url).scheme and not url.startswith("/"), url
        assert (sweep / unquote(url)).is_file(), url
    assert "model.depth%3D28%2Cseed%3D0/samples/epoch_002.png" in files
    assert "<b>&</b>" not in page and "&lt;b&gt;&amp;&lt;/b&gt;" in page  # errors are escaped
    assert "http://" not in page and "https://" not in page


def test_report_handles_an_empty_or_all_broken_sweep(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "summary.json").write_text("[1, 2]")
    page = report.write_report(tmp_path)
    assert "summary.json: not a JSON object" in page.read_text()
    assert not (tmp_path / "report" / "val_loss_curves.png").exists()


def test_main_prints_table_and_page(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| run | depth |") and f"report: {sweep / 'report.html'}" in out


def test_main_missing_folder_is_one_error_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "resvae.sweep.report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"resvae-report: error: no such sweep folder: {tmp_path / 'nope'}"
    ]


def test_wandb_offline_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    sweep = make_sweep(tmp_path / "sweep")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    report.log_report_to_wandb(sweep, project="resvae-test", group="depth_sweep")
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")  # with the sweep
    assert list(run_dir.glob("run-*.wandb"))
    tables = list(run_dir.glob("files/media/table/**/*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == CSV_FIELDS
    assert len(table["data"]) == len(FINISHED) + 3 + 2  # runs, failed and broken ones, two means
    assert len(list(run_dir.glob("files/media/images/**/*.png"))) == PLOTS


def assert_fits(layout: dict, visible: list[str]) -> None:
    """The page is no wider than the viewport, and the header cells of class `visible` are in view."""
    assert layout["viewport"] == VIEWPORT["width"] and layout["scrollWidth"] <= layout["viewport"], layout
    seen = {cls: (left, right) for cls, _, left, right in layout["headers"]}
    for cls in visible:
        left, right = seen[cls]
        assert 0 <= left < right <= min(layout["viewport"], layout["wrap"]) + 0.5, (cls, layout)


def test_html_in_headless_chromium(sweep: Path, tmp_path: Path) -> None:
    errors, first_cells, images, layout = open_in_chromium(sweep / "report.html", tmp_path / "depth.png")
    assert errors == []
    runs = [*FINISHED, FAILED, MALFORMED, NO_SUMMARY]
    assert [c for c in first_cells if not c.startswith("depth ")] == runs
    assert [c.split(":")[0] for c in first_cells if c.startswith("depth ")] == [
        "depth 28 resvae",
        "depth 40 resvae",
    ]
    assert len(images) == PLOTS + 2 * len(FINISHED) + 1
    assert all(complete and width > 0 for _, complete, width in images), images
    assert_fits(layout, ["run", "depth", "test_bpd", "status"])


# ------------------------------------------------------------------ an Optuna search: lr and latent_dim
# (lr, latent_dim, min val loss, test bits/dim) at depth 28, the last trial failed; folders named as
# older resvae named a job: by its full overrides, which pushed the table off a 1,400 px screen
TRIALS = [(1e-4, 64, 130.0, 4.1), (3e-4, 128, 110.0, 3.9), (1e-3, 128, 100.0, 3.7),
          (3e-3, 256, 104.0, 3.8), (1e-2, 64, 150.0, 4.4)]  # fmt: skip
LR, LATENT = "model.optimizer.lr", "model.arch.latent_dim"
VIA_HYDRA = 2  # this trial's overrides only in .hydra/overrides.yaml (no config in its summary.json)


def trial_overrides(lr: float, latent: int) -> list[str]:
    fixed = ["model.arch.depth=28", "data.root=%2Fscratch%2Fdatasets%2Fcifar10", "model.kl_warmup_steps=1000"]
    return [*fixed, f"{LR}={lr!r}", f"{LATENT}={latent}"]


def trial_name(i: int) -> str:
    return f"hparams_search=vae_lr_latent,trial={i},{','.join(sorted(trial_overrides(*TRIALS[i][:2])))}"


def make_lr_sweep(root: Path) -> Path:
    sweep = root / "multirun"
    for i, (lr, latent, min_val, bpd) in enumerate(TRIALS):
        run = sweep / trial_name(i)
        (run / ".hydra").mkdir(parents=True)
        model = {"optimizer": {"lr": lr}, "arch": {"depth": 28, "latent_dim": latent}}
        # network.latent_dim: an interpolated copy, the same column, not another
        config = {"seed": 0, "data": {"seed": 0}, "model": model, "network": {"latent_dim": latent}}
        summary = {"status": "finished" if i < len(TRIALS) - 1 else "failed", "network": "resvae",
                   "depth": 28, "seed": 0, "layers": 28, "params": 1_000_000 * latent, "epochs": 3,
                   "train_seconds": 1800.0 * (i + 1), "images_per_second": 900.0 + i, "test_bpd": bpd,
                   "bpd_is_likelihood": True, "config": config}  # fmt: skip
        summary["overrides"] = trial_overrides(lr, latent)
        if i == VIA_HYDRA:
            del summary["config"], summary["overrides"]
        (run / "summary.json").write_text(json.dumps(summary))
        (run / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in trial_overrides(lr, latent))
        )
        write_metrics(run / "metrics.csv", [min_val + 8, min_val + 3, min_val])
    return sweep


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = make_lr_sweep(tmp_path_factory.mktemp("lr_report"))
    write_grid(sweep / "report" / "val_loss_vs_depth.png", (0, 0, 0))  # an earlier report's: removed
    report.write_report(sweep)
    return sweep


def test_searched_parameters_are_columns(lr_sweep: Path) -> None:
    rows = csv_rows(lr_sweep)
    assert list(rows[0]) == ["kind", "run", "lr", "latent", *CSV_FIELDS[2:]]  # Table 1's columns kept
    assert [r["run"] for r in rows] == [trial_name(i) for i in range(len(TRIALS))]  # sorted by lr
    for row, (lr, latent, *_) in zip(rows, TRIALS):  # the VIA_HYDRA trial's from .hydra/overrides.yaml
        assert (float(row["lr"]), int(row["latent"]), row["depth"]) == (lr, latent, "28")
    md = (lr_sweep / "report.md").read_text()
    assert f"lr = `{LR}` (5 values); latent = `{LATENT}` (3 values)" in md
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert header.startswith("| run | lr | latent | depth | seed |") and "| 0.0003 | 128 | 28 | 0 |" in md
    for unit in ("training time (hours)", "min train loss (nats/image)", "min val loss (nats/image)"):
        assert f"| {unit} |" in header, unit
    page = (lr_sweep / "report.html").read_text()
    assert f'<th class="param" title="{LR}">lr</th><th class="param" title="{LATENT}">latent</th>' in page


def test_plots_are_against_the_learning_rate(lr_sweep: Path) -> None:
    stems = sorted(p.stem for p in (lr_sweep / "report").glob("*.png"))  # none vs depth: it is fixed
    assert stems == sorted(["val_loss_curves", *(s.replace("_depth", "_lr") for s in BY_DEPTH)])
    runs = collect_runs(lr_sweep)
    params = varied_params(runs)
    axis = x_axis(table_rows(runs, params), params)
    assert (axis.short, axis.log, axis.label) == ("lr", True, f"lr ({LR}), log scale")
    assert x_axis(table_rows(runs, params[1:]), params[1:]).log is False  # latent: 64 to 256


def test_every_plot_axis_has_its_unit(
    sweep: Path, lr_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    axes: list = []
    figure = plots._figure
    monkeypatch.setattr(
        plots, "_figure", lambda *a: axes.append(figure(*a)[1]) or (axes[-1].figure, axes[-1])
    )
    for folder in (sweep, lr_sweep):
        runs = collect_runs(folder)
        params = varied_params(runs)
        plots.write_plots(runs, table_rows(runs, params), tmp_path / folder.parent.name, params)
    assert len(axes) == 2 * PLOTS
    for ax in axes:
        title, ylabel, xlabel = ax.get_title(), ax.get_ylabel(), ax.get_xlabel()
        assert any(unit in ylabel for unit in ("(nats/image)", "bits/dim", "(hours)", "(images/s)")), title
        assert xlabel in ("epoch", "depth", f"lr ({LR}), log scale"), title
        assert ax.get_xscale() == ("log" if title.endswith("vs lr") else "linear"), title


def test_a_categorical_sweep_plots_each_value(tmp_path: Path) -> None:
    for i, (optimizer, seed) in enumerate([("adam", 0), ("adam", 1), ("sgd", 0)]):
        (run := tmp_path / f"optimizer={optimizer},seed={seed}").mkdir()
        summary = {"status": "finished", "depth": 28, "seed": seed, "min_val_loss": 100.0 + i}
        summary |= {"overrides": [f"optimizer={optimizer}", f"seed={seed}"], "config": {"seed": seed}}
        (run / "summary.json").write_text(json.dumps(summary))
    report.write_report(tmp_path)
    assert [p.name for p in (tmp_path / "report").glob("*.png")] == ["val_loss_by_optimizer.png"]
    assert list(csv_rows(tmp_path)[0])[:3] == ["kind", "run", "optimizer"]  # seed: a column already


def test_varied_keys_and_their_short_names(tmp_path: Path) -> None:
    assert [parse_value(v) for v in ("1e-4", "128", "'a=b'", "null")] == [1e-4, 128, "a=b", None]
    keys = ["model.optimizer.lr", "model.arch.latent_dim", "data.seed", "a.width", "b.width"]
    assert list(short_names(keys, reserved=["seed"]).values()) == ["lr", "latent", *keys[2:]]
    for depth, latent, seed in [(28, 64, 0), (40, 128, 1)]:  # without overrides: the config's keys,
        (run := tmp_path / f"run{depth}").mkdir()  # less copies of one and of the depth and seed columns
        model = {"arch": {"depth": depth, "latent_dim": latent}}
        config = {"seed": seed, "data": {"seed": seed}, "model": model, "network": {"latent_dim": latent}}
        summary = {"status": "finished", "depth": depth, "seed": seed, "config": config}
        (run / "summary.json").write_text(json.dumps(summary))
    params = varied_params(collect_runs(tmp_path))
    assert [(p.key, p.short, p.values) for p in params] == [(LATENT, "latent", (64, 128))]


def test_lr_sweep_fits_a_1400px_screen_in_headless_chromium(lr_sweep: Path, tmp_path: Path) -> None:
    shot = Path(os.environ.get("RESVAE_REPORT_SCREENSHOT") or tmp_path / "lr.png")
    errors, first_cells, _, layout = open_in_chromium(lr_sweep / "report.html", shot)
    assert errors == []
    assert_fits(layout, ["run", "param", "test_bpd", "test_bpd_iw", "status"])
    assert [h[1] for h in layout["headers"]][:4] == ["run", "lr", "latent", "depth"]
    names = [trial_name(i) for i in range(len(TRIALS))]
    assert layout["titles"] == names  # each long name shortened, whole in its title
    assert all(len(cell) < len(name) for cell, name in zip(first_cells, names))


def test_main_is_one_line_when_the_report_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path)
    (sweep / "report").write_text("a file where the report's folder of plots goes")
    assert report.main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resvae-report: error: cannot write the report into") and "\n" not in err
