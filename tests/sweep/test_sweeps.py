"""Sweeps: an Optuna search that continues after a kill, W&B sweep files that are valid overrides,
seeds as a second sweep axis, stopping a sweep (basic and submitit_local launchers), SIGUSR2,
and what the offline W&B runs record (summary, tags, the preempting mark)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from resvae.metrics import DASHBOARD_FIELDS
from resvae.run.config import config_dir
from tests.helpers.config import REPO, TINY, compose_train
from tests.helpers.processes import finish_logged, start_logged, wait_for_logged
from tests.helpers.records import only_run_dir, read_status, run_dirs, summary_of, sweep_folders
from tests.helpers.wandb_offline import of_type, wandb_records, wandb_summary

# a short run whose resume must match an uninterrupted one (as in run/test_resume.py)
RESUME_ARGS = [*TINY, "trainer.max_epochs=3", "logger=csv", "test=false",
               "callbacks.early_stopping.patience=100",
               "model.optimizer.lr=5e-3"]  # fmt: skip
SWEEP_FILES = sorted((REPO / "jobs" / "wandb_sweeps").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (config_dir() / "hparams_search").glob("*.yaml"))


# ----------------------------------------------------------------------------- helpers
def sample_values(spec: dict) -> list:
    """Values a sweep parameter can take, for a config check: its values, or its bounds."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def fixed_overrides(command: list[str]) -> list[str]:
    """The Hydra overrides a W&B sweep's command passes besides the sweep's parameters."""
    after = command[command.index("resvae-train") + 1 :]
    return [c for c in after if not str(c).startswith("${")]


# ----------------------------------------------------------------------------- configs, no training
@pytest.mark.parametrize("search", SEARCHES)
def test_hparams_search_is_a_resumable_optuna_study_in_the_sweep_folder(search: str) -> None:
    overrides = [f"+hparams_search={search}", *TINY]
    cfg = compose_train(overrides, hydra_cfg=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.direction == "minimize"
    # the study lives in this sweep's folder (named by the command line), under a fixed name
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    assert f"/multirun/+hparams_search={search}," in cfg.hydra.sweep.dir and sweeper.study_name
    # every searched key is one of the app's (a value of each range composes)
    parser = OverridesParser.create()
    for key, text in sweeper.params.items():
        override = parser.parse_override(f"{key}={text}")
        assert override.is_sweep_override(), key
        if override.is_interval_sweep():
            values = [override.value().start, override.value().end]
        else:
            values = list(override.sweep_iterator())
        for value in values:
            compose_train([*overrides, f"{key}={value}"])


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_wandb_sweep_files_pass_valid_overrides(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("bayes", "random", "grid")
    assert sweep["metric"]["goal"] == "minimize"
    assert sweep["metric"]["name"] in DASHBOARD_FIELDS  # a run summary field resvae writes (see below)
    command = sweep["command"]
    assert command[0] == "${env}" and command[-1] == "${args_no_hyphens}", command
    fixed = fixed_overrides(command)
    base = compose_train(fixed, hydra_cfg=True)
    assert str(base.hydra.mode) != "RunMode.MULTIRUN", "an agent's command must be one run, not a sweep"
    assert sweep["parameters"], path
    for key, spec in sweep["parameters"].items():
        for value in sample_values(spec):
            cfg = compose_train([*fixed, f"{key}={value}"])  # an unknown key or bad value raises
            node: object = cfg
            for part in key.split("."):
                node = node[part]
            assert node == value, (key, value, node)


@pytest.mark.parametrize("experiment", ["depth_sweep", "seed_depth_sweep"])
def test_seeds_on_the_command_line_are_a_second_sweep_axis(experiment: str) -> None:
    """`resvae-train experiment=E seed=0,1,2`: Hydra's basic sweeper crosses the experiment's
    depths with the seeds (the sweeper's own job list, no training)."""
    cfg = compose_train([f"experiment={experiment}"], hydra_cfg=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parser = OverridesParser.create()
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides([*params, "seed=0,1,2"]), None)
    pairs = {tuple(sorted(job)) for job in jobs}
    assert len(jobs) == len(pairs) == 12
    assert pairs == {(f"model.arch.depth={d}", f"seed={s}") for d in (28, 40, 70, 100) for s in (0, 1, 2)}


# ----------------------------------------------------------------------------- seeds, two sweeps, W&B records
@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two sweeps under one name: 2 depths x 2 seeds, and a 1-job sweep with W&B tags."""
    root = tmp_path_factory.mktemp("two_sweeps")
    common = [*TINY, "trainer.max_epochs=1", "test=false"]
    proc, out = start_logged(root, "-m", *common, "model.arch.depth=28,34", "seed=0,1", "logger=csv")
    text = finish_logged(proc, out)
    assert proc.returncode == 0, text[-4000:]
    proc, out = start_logged(
        root, "-m", *TINY, "trainer.max_epochs=1", "seed=5", "logger=wandb", "tags=[x,y]"
    )
    text = finish_logged(proc, out)
    assert proc.returncode == 0, text[-4000:]
    return root, text


@pytest.mark.slow
def test_seed_sweep_reports_mean_and_spread_per_depth(two_sweeps) -> None:
    root, _ = two_sweeps
    (sweep,) = [s for s in sweep_folders(root) if "seed=0,1" in s.name]
    assert len(run_dirs(sweep)) == 4
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    means = {r["depth"]: r for r in rows if r["kind"] == "mean"}
    assert sorted(means) == ["28", "34"]
    for depth, row in means.items():
        runs = [r for r in rows if r["kind"] != "mean" and r["depth"] == depth]
        assert sorted(r["seed"] for r in runs) == ["0", "1"]
        values = [float(r["min_val_loss"]) for r in runs]
        assert float(row["min_val_loss"]) == pytest.approx(sum(values) / 2, rel=1e-6)
        assert float(row["min_val_loss_std"]) == pytest.approx(abs(values[0] - values[1]) / 2**0.5, rel=1e-6)
        assert row["n_seeds"] == "2"
    text = (sweep / "report.md").read_text()
    assert text.count("mean ± sd over 2 seeds") == 2 and " ± " in text


@pytest.mark.slow
def test_two_sweeps_under_one_name_keep_their_own_folders_and_reports(two_sweeps) -> None:
    root, _ = two_sweeps
    sweeps = sweep_folders(root)
    assert [s.parent for s in sweeps] == [root / "outputs" / "smoke" / "multirun"] * 2
    assert sorted(len(run_dirs(s)) for s in sweeps) == [1, 4]
    for sweep in sweeps:
        jobs = sorted(run_dirs(sweep))
        with open(sweep / "report.csv") as f:
            reported = sorted({r["run"] for r in csv.DictReader(f) if r["kind"] != "mean"})
        assert reported == jobs, (sweep.name, reported, jobs)
        task = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        assert ("seed=0,1" in task) == ("seed=0,1" in sweep.name)


@pytest.mark.slow
def test_offline_wandb_run_has_the_summary_fields_and_tags(two_sweeps) -> None:
    root, _ = two_sweeps
    (sweep,) = [s for s in sweep_folders(root) if "seed=5" in s.name]
    run_dir = only_run_dir(sweep)
    records = wandb_records(run_dir)
    (run,) = of_type(records, "run")
    assert list(run.run.tags)[:2] == ["x", "y"] and run.run.run_group == "smoke"
    assert {"model=VAE", "depth=28", "sweep=smoke"} <= set(run.run.tags)  # to filter by
    config = {}
    for record in [run, *of_type(records, "config")]:
        items = (
            record.run.config.update if record.WhichOneof("record_type") == "run" else record.config.update
        )
        config.update({item.key: json.loads(item.value_json) for item in items})
    assert config["model.arch.depth"] == 28 and config["seed"] == 5  # the config once, flattened
    assert not {"beta", "iw_samples", "train_step", "config"} & config.keys()  # no second copy
    history = [i.key or "/".join(i.nested_key) for r in of_type(records, "history") for i in r.history.item]
    assert "test/results/_type" in history  # the test results as a W&B table
    values = wandb_summary(records)
    for key in ("best_val_loss", "min_train_loss", "params", "depth", "test_bpd", "status"):
        assert values.get(key) is not None, key
    assert values["best_val_loss"] == pytest.approx(summary_of(run_dir)["best_val_loss"])
    assert values["depth"] == 28 and values["params"] == summary_of(run_dir)["params"]
    for path in SWEEP_FILES:  # what the W&B sweeps minimise is there
        assert yaml.safe_load(path.read_text())["metric"]["name"] in values
    assert [r.exit.exit_code for r in of_type(records, "exit")] == [0]
    assert not of_type(records, "preempting")


@pytest.mark.slow
def test_a_wandb_agent_run_logs_to_the_agents_run(tmp_path: Path) -> None:
    """What `wandb agent` runs for vae_lr_latent.yaml (its command with one value per parameter,
    on the smoke data), in the environment the agent sets: the W&B run is the agent's (its id,
    the sweep's project and id), and its summary has the sweep's metric."""
    sweep = yaml.safe_load((REPO / "jobs" / "wandb_sweeps" / "vae_lr_latent.yaml").read_text())
    params = [f"{key}={sample_values(spec)[0]}" for key, spec in sweep["parameters"].items()]
    agent = {"WANDB_SWEEP_ID": "sw33p1d", "WANDB_RUN_ID": "agentrun1", "WANDB_PROJECT": "sweeps-project"}
    args = [*TINY, "trainer.max_epochs=1", "test=false", "logger=wandb", *fixed_overrides(sweep["command"])]
    proc, out = start_logged(tmp_path, *args, *params, env=agent)
    text = finish_logged(proc, out)
    assert proc.returncode == 0, text[-4000:]
    run_dir = only_run_dir(tmp_path / "outputs" / sweep["name"])
    records = wandb_records(run_dir)
    (run,) = of_type(records, "run")
    assert (run.run.run_id, run.run.project, run.run.sweep_id) == ("agentrun1", "sweeps-project", "sw33p1d")
    assert wandb_summary(records)[sweep["metric"]["name"]] == pytest.approx(
        summary_of(run_dir)["best_val_loss"]
    )


# ----------------------------------------------------------------------------- Optuna
@pytest.mark.slow
def test_killed_optuna_search_continues_its_study(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    args = ["+hparams_search=vae_lr_latent", *TINY, "trainer.max_epochs=2", "test=false", "logger=csv",
            "hydra.sweeper.n_trials=3"]  # fmt: skip
    proc, out = start_logged(tmp_path, *args)
    # SIGKILL while trial 1 (the second) trains, after its first epoch's checkpoint
    wait_for_logged(lambda: len(list(tmp_path.glob("outputs/**/checkpoints/last.ckpt"))) >= 2, proc, out,
                    "the second trial's first checkpoint")  # fmt: skip
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, out.read_text()[-4000:]
    (sweep,) = sweep_folders(tmp_path)
    storage = f"sqlite:///{sweep}/optuna.db"
    before = optuna.load_study(study_name="vae_lr_latent", storage=storage).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING], before

    proc, out = start_logged(tmp_path, *args)
    text = finish_logged(proc, out)
    assert proc.returncode == 0, text[-4000:]
    assert "1 of 3 trial(s) finished, 2 to run" in text and "resuming from" in text
    study = optuna.load_study(study_name="vae_lr_latent", storage=storage)
    trials = study.get_trials()
    # numbering continues (no trial 0 again); the interrupted trial ran again with its parameters
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]  # fmt: skip
    assert study.user_attrs["resvae_interrupted_trials"] == [1]
    assert trials[2].params == trials[1].params
    # three trials, three run folders: the rerun trial finished in the interrupted one's folder
    jobs = run_dirs(sweep)
    assert len(jobs) == 3 and all(summary_of(j)["status"] == "finished" for j in jobs.values())
    assert sorted(t.value for t in trials if t.value is not None) == sorted(
        summary_of(j)["best_val_loss"] for j in jobs.values()
    )

    # the same command once more: the study is complete, nothing runs
    proc, out = start_logged(tmp_path, *args)
    text = finish_logged(proc, out)
    assert proc.returncode == 0, text[-4000:]
    assert "3 of 3 trial(s) finished, 0 to run" in text
    assert len(optuna.load_study(study_name="vae_lr_latent", storage=storage).get_trials()) == 4


# ----------------------------------------------------------------------------- stopping sweeps
def job_processes(root: Path) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the processes whose command line names a folder below
    root and submitit (the submitit_local jobs and their controllers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if str(root) in cmdline and "submitit" in cmdline:
                found[int(entry.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), cmdline)
    return found


@pytest.fixture
def reaper(tmp_path: Path):
    """Kills the submitit processes a failing test would leave behind."""
    yield
    for pid in job_processes(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def job_tasks(root: Path) -> dict[int, int]:
    """pid -> controller pid (its submitit job id) of each running submitit_local job."""
    return {pid: ppid for pid, (ppid, cmd) in job_processes(root).items() if "submitit.core._submit" in cmd}


@pytest.mark.slow
def test_sigterm_stops_a_basic_sweep_and_marks_its_wandb_run_preempting(tmp_path: Path) -> None:
    """The basic launcher runs the jobs in the sweep process: SIGTERM saves the running job's
    last.ckpt and ends the sweep (exit 143) before the next job starts."""
    proc, out = start_logged(tmp_path, "-m", *TINY, "trainer.max_epochs=200", "seed=0,1", "logger=wandb")
    wait_for_logged(
        lambda: bool(list(tmp_path.glob("outputs/**/checkpoints/last.ckpt"))), proc, out, "a checkpoint"
    )
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    text = finish_logged(proc, out, timeout=120)
    assert proc.returncode == 143, text[-4000:]
    assert "SIGTERM: saved" in text
    (sweep,) = sweep_folders(tmp_path)
    (job,) = run_dirs(sweep).values()  # the second job never started
    assert job.name.endswith("seed=0") and (job / "checkpoints" / "last.ckpt").is_file()
    assert summary_of(job)["status"] == "interrupted"
    assert (sweep / "report.md").is_file()  # written on the way out
    records = wandb_records(job)
    assert of_type(records, "preempting"), "the W&B run is not marked preempting"
    assert [r.exit.exit_code for r in of_type(records, "exit")] == [1]


@pytest.mark.slow
def test_submitit_local_jobs_requeue_on_sigusr2_and_stop_with_the_sweep(tmp_path: Path, reaper) -> None:
    """submitit_local runs each job in a child process. SIGUSR2 (what submitit's controller sends
    before timeout_min) makes a job save last.ckpt and be requeued by submitit, resuming there;
    SIGTERM to the sweep process reaches every job, each ends interrupted with its last.ckpt,
    and none is left."""
    proc, out = start_logged(tmp_path, "-m", "hydra/launcher=submitit_local", *TINY,
                             "trainer.max_epochs=1000", "callbacks.early_stopping.patience=1000",
                             "seed=0,1", "logger=csv")  # fmt: skip
    wait_for_logged(lambda: len(list(tmp_path.glob("outputs/**/checkpoints/last.ckpt"))) == 2, proc, out,
                    "both jobs' first checkpoints")  # fmt: skip
    assert all(read_status(p) == "running" for p in tmp_path.glob("outputs/**/summary.json"))
    tasks = job_tasks(tmp_path)
    assert len(tasks) == 2 and len(job_processes(tmp_path)) == 4  # a controller and a job each
    (sweep,) = sweep_folders(tmp_path)

    victim = min(tasks)
    os.kill(victim, signal.SIGUSR2)
    wait_for_logged(lambda: any("resuming from" in p.read_text() for p in sweep.glob("*/train.log")),
                    proc, out, "the requeued job's resume")  # fmt: skip
    requeued = sweep / ".submitit" / str(tasks[victim])
    logs = "".join(p.read_text() for p in requeued.glob("*_log.*"))
    assert "SIGUSR2: saved" in logs and "Requeued job" in logs, logs[-4000:]
    assert victim not in job_tasks(tmp_path) and len(job_tasks(tmp_path)) == 2

    proc.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    text = finish_logged(proc, out, timeout=240)
    print(f"the sweep stopped in {time.monotonic() - stopping:.1f} s")
    assert proc.returncode == 143, text[-4000:]
    assert "SIGTERM: stopping 2 running job(s)" in text
    assert job_processes(tmp_path) == {}
    jobs = run_dirs(sweep)
    assert len(jobs) == 2
    for job in jobs.values():
        assert summary_of(job)["status"] == "interrupted" and (job / "checkpoints" / "last.ckpt").is_file()
    (other,) = set(tasks.values()) - {tasks[victim]}
    logs = "".join(p.read_text() for p in (sweep / ".submitit" / str(other)).glob("*_log.*"))
    assert "SIGTERM: saved" in logs, logs[-4000:]
    assert "2 job(s)" in text and (sweep / "report.md").is_file()


# ----------------------------------------------------------------------------- SIGUSR2 (submitit's)
def last_checkpoint(root: Path) -> dict:
    path = only_run_dir(root / "outputs") / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigusr2_saves_the_current_batch_and_the_rerun_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    stopped = tmp_path / "stopped"
    uninterrupted.mkdir()
    stopped.mkdir()
    reference, reference_out = start_logged(uninterrupted, *RESUME_ARGS)
    proc, out = start_logged(stopped, *RESUME_ARGS)
    wait_for_logged(
        lambda: bool(list(stopped.glob("outputs/**/checkpoints/last.ckpt"))), proc, out, "a checkpoint"
    )
    first_step = last_checkpoint(stopped)["global_step"]  # the end of epoch 0
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR2)
    text = finish_logged(proc, out, timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2 == 140, text[-4000:]
    assert "SIGUSR2: saved" in text
    assert last_checkpoint(stopped)["global_step"] > first_step  # saved when stopped, not an old one
    assert summary_of(only_run_dir(stopped / "outputs"))["status"] == "interrupted"

    proc, out = start_logged(stopped, *RESUME_ARGS)
    text = finish_logged(proc, out)
    assert proc.returncode == 0 and "resuming from" in text, text[-4000:]
    text = finish_logged(reference, reference_out)
    assert reference.returncode == 0, text[-4000:]
    want, got = last_checkpoint(uninterrupted), last_checkpoint(stopped)
    assert got["global_step"] == want["global_step"] and got["epoch"] == want["epoch"]
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- handlers outside training
def test_a_signal_outside_training_runs_the_handler_there_before_then_stops() -> None:
    """Before and after fit, a configured signal ends the job; a handler installed earlier
    (submitit's) still runs first: its SIGTERM handler only logs (the job must still stop), its
    SIGUSR2 handler requeues and exits with its own code (which must win)."""
    from resvae.run.signals import StopNow

    seen: list[int] = []
    with pytest.raises(SystemExit) as stopped:
        StopNow(lambda signum, frame: seen.append(signum))(signal.SIGTERM, None)
    assert stopped.value.code == 143 and seen == [signal.SIGTERM]

    def requeue(signum: int, frame: object) -> None:
        raise SystemExit(144)  # submitit's local requeue code

    with pytest.raises(SystemExit) as requeued:
        StopNow(requeue)(signal.SIGUSR2, None)
    assert requeued.value.code == 144
    with pytest.raises(SystemExit) as plain:
        StopNow(signal.SIG_DFL)(signal.SIGUSR2, None)
    assert plain.value.code == 140


@pytest.mark.slow
def test_a_job_refused_by_its_folders_lock_fails_the_sweep(tmp_path: Path) -> None:
    """A job whose folder another live trainer holds is refused and writes nothing there, so its
    summary.json cannot tell the sweep: the sweep must still exit non-zero and name the job,
    while the other jobs run."""
    from filelock import FileLock

    args = ["-m", *TINY, "logger=csv", "test=false", "seed=0,1"]
    proc, out = start_logged(tmp_path, *args, "trainer.max_epochs=1")
    assert finish_logged(proc, out) is not None and proc.returncode == 0, out.read_text()[-4000:]
    jobs = run_dirs(tmp_path / "outputs")
    (held,) = [folder for name, folder in jobs.items() if name.endswith("seed=1")]
    with FileLock(held / ".lock", timeout=0):  # another process's trainer, as far as the job can tell
        proc, out = start_logged(tmp_path, *args, "trainer.max_epochs=2")  # extends both runs
        text = finish_logged(proc, out)
    assert proc.returncode == 1, text[-4000:]
    assert "is in use by another trainer" in text
    assert f"1 job(s) did not run in this sweep (the reason is above):\n  {held}" in text
    epochs = {name[-6:]: summary_of(folder)["epochs"] for name, folder in jobs.items()}
    assert epochs == {"seed=0": 2, "seed=1": 1}  # the free job ran; the held one is untouched


@pytest.mark.slow
def test_a_sweep_ending_with_a_job_another_process_runs_exits_non_zero(tmp_path: Path) -> None:
    """Under submitit_local a refused job's NaN stays in its own process. The sweep process,
    once all its jobs ended, finds that job's folder still `running` (another trainer has it:
    the same sweep started twice, or jobs orphaned by a SIGKILLed sweep), names it and exits 1."""
    from filelock import FileLock

    args = ["-m", *TINY, "logger=csv", "test=false", "seed=0,1"]
    proc, out = start_logged(tmp_path, *args, "trainer.max_epochs=1")
    assert finish_logged(proc, out) is not None and proc.returncode == 0, out.read_text()[-4000:]
    jobs = run_dirs(tmp_path / "outputs")
    (held,) = [folder for name, folder in jobs.items() if name.endswith("seed=1")]
    record = summary_of(held)
    (held / "summary.json").write_text(json.dumps({**record, "status": "running"}))  # mid-run
    with FileLock(held / ".lock", timeout=0):
        proc, out = start_logged(tmp_path, *args, "trainer.max_epochs=2", "hydra/launcher=submitit_local")
        text = finish_logged(proc, out)
    assert proc.returncode == 1, text[-4000:]
    assert "1 job(s) not finished by this sweep (another process has them" in text
    assert f"\n  {held}\n" in text + "\n"
    assert len(run_dirs(tmp_path / "outputs")) == 2  # the same sweep folder and job folders
