"""Sweeps on existing engines: real multiruns of the paper experiment through Hydra's joblib and
submitit_local launchers (tiny data, tiny networks, a few steps), a killed submitit job that resumes
from its checkpoint when the sweep is launched again, and summarize reading the runs."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from deflow_trl.app import summarize as S
from deflow_trl.app.checkpoint import load_latest_checkpoint

TINY = [
    "agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2", "batch_size=16", "eval_episodes=1", "progress=false",
    "data.generate_if_missing=false", "compile_update=false", "agent.backend=eager",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def sweep_command(sweep_dir, dataset_dir, launcher, *extra):
    """The paper experiment on tasks 1 and 2 of cube-single, seed 0, in ``sweep_dir``."""
    return [sys.executable, "-m", "deflow_trl.train", "-m", "+experiment=paper", "env=cube_single", "task=1,2",
            "seed=0", *TINY, f"data.dataset_dir={dataset_dir}", f"hydra.sweep.dir={sweep_dir}",
            f"hydra/launcher={launcher}", *extra]


def run_dir(sweep_dir, task):
    return os.path.join(str(sweep_dir), "cube-single-play", "deflow", f"task{task}", "seed0")


def summarize_both(sweep_dir, tmp_path, capsys, steps, refused=None):
    """summarize reads the sweep: two complete runs, one per task, and the 2-task suite row; ``refused``:
    ``(task, reason)`` of a job the config checks refused, listed (not averaged) after them."""
    S.main([str(sweep_dir), "--json", str(tmp_path / "summary.json")])
    out = capsys.readouterr().out
    data = json.load(open(tmp_path / "summary.json"))
    assert [(r["status"], r.get("task"), r.get("seed"), r["last_eval_step"]) for r in data["runs"]] == [
        ("complete", 1, 0, steps), ("complete", 2, 0, steps)] + ([("failed", None, None, None)] if refused else [])
    assert [r["run_dir"] for r in data["runs"][:2]] == [f"cube-single-play/deflow/task{t}/seed0" for t in (1, 2)]
    if refused is not None:
        task, reason = refused
        (job,) = data["runs"][2:]
        assert (job["run_dir"], job["reason"], job["score"]) == (
            f"cube-single-play/deflow/task{task}/seed0", f"refused (FAILED: {reason})", None)
        assert f"| cube-single-play/deflow/task{task}/seed0 | failed | refused (FAILED: {reason}) |" in out
    assert [r["dataset"] for r in data["rows"]] == [f"cube-single-play-singletask-task{t}-v0" for t in (1, 2)]
    (suite,) = data["suites"]
    assert suite["tasks"] == [1, 2] and suite["seeds"] == 1 and 0 <= suite["mean"] <= 100
    assert suite["mean"] == pytest.approx(sum(r["score"] for r in data["runs"][:2]) / 2)  # never the refused job
    assert "| cube-single-play | deflow | 1,2 | 1 |" in out
    return data


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_and_summarize_reads_them(tiny_ogbench_dir, tmp_path, capsys):
    """2 runs (tasks 1, 2) plus a job on an unknown task (9): the bad job gets one clear line, the others finish;
    summarize lists the refused job (its directory holds only the FAILED marker) with its reason, not averaged."""
    sweep = tmp_path / "joblib"
    cmd = sweep_command(sweep, tiny_ogbench_dir, "joblib", "hydra.launcher.n_jobs=2", "offline_steps=4",
                        "eval_interval=2", "save_interval=4", "log_interval=2")
    cmd[cmd.index("task=1,2")] = "task=1,2,9"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV)
    errors = [line for line in done.stderr.splitlines() if line.startswith("[deflow_trl] error:")]
    refusal = "task must be one of 1..5 (OGBench single-task ids), got 9"
    assert errors == [f"[deflow_trl] error: {refusal}"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for task in (1, 2):
        state, _ = load_latest_checkpoint(os.path.join(run_dir(sweep, task), "checkpoints"))
        assert state["step"] == 4
    assert os.listdir(run_dir(sweep, 9)) == ["FAILED"]  # refused before its record: no .hydra/, no checkpoints
    # The joblib workers' failure reaches the launching process: listed, exit status 1.
    assert done.returncode == 1 and "1 job(s) of the sweep failed" in done.stderr, done.stderr[-3000:]
    assert open(os.path.join(run_dir(sweep, 9), "FAILED")).read().startswith("task must be one of 1..5")
    summarize_both(sweep, tmp_path, capsys, steps=4, refused=(9, refusal))


def _checkpoint_step(directory):
    found = load_latest_checkpoint(directory) if os.path.isdir(directory) else None
    return found[0]["step"] if found else 0


@pytest.mark.slow
def test_submitit_sweep_killed_mid_run_resumes_from_checkpoints(tiny_ogbench_dir, tmp_path, capsys):
    """Kill a submitit_local sweep (launcher and jobs) mid-run, launch the same sweep again: each job
    resumes at the step of its latest checkpoint and finishes; summarize reads both runs."""
    sweep = tmp_path / "submitit"
    steps = 200
    cmd = sweep_command(sweep, tiny_ogbench_dir, "submitit_local", "hydra.launcher.timeout_min=10",
                        f"offline_steps={steps}", f"eval_interval={steps}", "save_interval=10", "log_interval=10")
    ckpts = [os.path.join(run_dir(sweep, t), "checkpoints") for t in (1, 2)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 180
        while min(_checkpoint_step(c) for c in ckpts) < 20:
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint at step 20 within 180 s"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher, submitit's controllers and the jobs: one process group
        first.wait()
    saved = [_checkpoint_step(c) for c in ckpts]
    assert all(20 <= s < steps for s in saved), saved  # killed mid-run
    # A killed run is reported as unfinished, not scored.
    killed = [S.inspect_run(run_dir(sweep, t)) for t in (1, 2)]
    assert [r["status"] for r in killed] == ["unfinished", "unfinished"], killed
    assert all(r["score"] is None and f"of {steps}" in r["reason"] for r in killed)

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    for task, step in zip((1, 2), saved):
        log = open(os.path.join(run_dir(sweep, task), "train.log")).read()
        resumed = [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", log)]
        assert resumed == [step], log[-2000:]
        assert _checkpoint_step(ckpts[task - 1]) == steps
    summarize_both(sweep, tmp_path, capsys, steps=steps)


@pytest.mark.parametrize("launcher,target", [
    ("joblib", "JoblibLauncher"), ("submitit_local", "LocalLauncher"), ("submitit_slurm", "SlurmLauncher")])
def test_launchers_compose_with_the_paper_experiment(launcher, target):
    from hydra import compose, initialize_config_dir

    from deflow_trl.app.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=paper", f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.sweeper.params.task == "1,2,3,4,5"


def test_an_unknown_launcher_is_one_clear_message():
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    from deflow_trl.app.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException) as err:
            compose("train", overrides=["+experiment=paper", "hydra/launcher=ray"], return_hydra_config=True)
    msg = str(err.value)
    assert "Could not find 'hydra/launcher/ray'" in msg
    assert all(name in msg for name in ("basic", "joblib", "submitit_local", "submitit_slurm"))  # what to use instead


@pytest.mark.slow
def test_submitit_preemption_signal_saves_then_requeues_and_the_job_resumes(tiny_ogbench_dir, tmp_path):
    """SIGUSR2 (submitit's preemption / time-limit warning) to a running submitit_local job: the run saves a
    checkpoint at that step (no periodic one exists: save_interval > steps), submitit requeues the job, the
    requeued job resumes at exactly that step and finishes; the sweep ends with status 0."""
    sweep, steps = tmp_path / "usr2", 400
    cmd = [a if a != "task=1,2" else "task=1" for a in sweep_command(
        sweep, tiny_ogbench_dir, "submitit_local", "hydra.launcher.timeout_min=10", f"offline_steps={steps}",
        f"eval_interval={steps}", "save_interval=100000", "log_interval=10")]
    run = run_dir(sweep, 1)
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    try:
        deadline, pid = time.time() + 180, None
        while pid is None:  # the job's pid (its run lock names it) once it has logged a few updates
            assert launcher.poll() is None, launcher.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the job did not start training within 180 s"
            time.sleep(0.2)
            try:
                logged = open(os.path.join(run, "metrics", "scalars", "train", "loss_qvalue.csv")).read().split()
                lock = dict(line.split("=", 1) for line in open(os.path.join(run, ".lock")).read().split("\n") if "=" in line)
            except (FileNotFoundError, ValueError):
                continue
            if len(logged) >= 2 and "pid" in lock:
                pid = int(lock["pid"])
        os.kill(pid, signal.SIGUSR2)
        launcher.wait(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, launcher.stderr.read().decode()[-3000:]
    log = open(os.path.join(run, "train.log")).read()
    resumed = [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and 20 <= resumed[0] < steps, log[-3000:]  # the step the signal stopped at
    assert _checkpoint_step(os.path.join(run, "checkpoints")) == steps
