"""Runs that survive people and clusters (issue 15, items 1-11): locks, a run's record,
signals, memmap resume, corrupt checkpoints, early one-line errors, sweeps.

Locks and signals are exercised on real subprocesses; everything else calls the app in-process.
"""
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest
import torch
from test_train import TINY, config

from deflow_trl.app.checkpoint import load_latest_checkpoint, save_checkpoint
from deflow_trl.app.plot import read_scalar
from deflow_trl.app.runlock import FileLock
from deflow_trl.app.train import TrainingStopped, run
from deflow_trl.data import load_ogbench_dataset
from deflow_trl.data.generate import atomic_savez, generate_dataset
from deflow_trl.errors import CheckpointError, ConfigError, DatasetError, RunLockedError, one_line

CUBE = "cube-single-play-singletask-task1-v0"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(run_dir, dataset_dir, *extra):
    return [sys.executable, "-m", "deflow_trl.train", *TINY, f"data.dataset_dir={dataset_dir}",
            f"hydra.run.dir={run_dir}", *extra]


def _csv_steps(run_dir, name="train/loss_flow"):
    path = os.path.join(run_dir, "metrics", "scalars", f"{name}.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [int(float(line.split(",")[0])) for line in f if line.strip()]


def _wait_for_rows(proc, run_dir, rows, timeout=180):
    deadline = time.time() + timeout
    while len(_csv_steps(run_dir)) < rows:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run logged nothing in time"
        time.sleep(0.2)


def _errors(stderr):
    """The app's error lines, and whether a traceback was printed."""
    return [line for line in stderr.splitlines() if "error:" in line], "Traceback" in stderr


def _snapshot(directory):
    """Every file's content hash and mtime, except the lock file (its holder info changes)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    out[os.path.relpath(path, directory)] = (hashlib.sha1(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


def _copy_data(src, dst, **changes):
    """A copy of the tiny cube dataset, with arrays of the train file replaced."""
    os.makedirs(dst, exist_ok=True)
    for suffix in (".npz", "-val.npz"):
        shutil.copy(os.path.join(src, "cube-single-play-v0" + suffix), os.path.join(dst, "cube-single-play-v0" + suffix))
    if changes:
        path = os.path.join(dst, "cube-single-play-v0.npz")
        with np.load(path) as f:
            arrays = {k: f[k] for k in f}
        arrays.update({k: v(arrays) for k, v in changes.items()})
        atomic_savez(path, arrays)
    return str(dst)


# ----------------------------------------------------------------------------- 1, 5: lock and signals (subprocesses)
@pytest.mark.slow
def test_second_process_is_refused_and_sigterm_saves_and_resumes(tiny_ogbench_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    # A long run that only saves at the end (or when stopped).
    proc = subprocess.Popen(_cmd(run_dir, tiny_ogbench_dir, "offline_steps=1000000", "save_interval=1000000",
                                 "eval_interval=1000000", "log_interval=1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for_rows(proc, run_dir, 2)
        # The same command again: refused at once, naming the live process; nothing appended.
        second = subprocess.run(_cmd(run_dir, tiny_ogbench_dir, "offline_steps=10"), capture_output=True, text=True,
                                env=ENV, timeout=180)
        assert second.returncode == 2
        errors, traceback = _errors(second.stderr)
        assert len(errors) == 1 and not traceback, second.stderr[-2000:]
        assert f"pid {proc.pid}" in errors[0] and "in use" in errors[0]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "SIGTERM" in last and "resume with: python -m deflow_trl.train" in last and f"hydra.run.dir={run_dir}" in last
    state, _ = load_latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    logged = _csv_steps(run_dir)
    assert state["step"] == max(logged) >= 2  # nothing since the last update lost
    assert logged == list(range(1, max(logged) + 1))  # every step once: no second writer
    # Resume (the lock was released by the exit) and run two more updates.
    stop = state["step"] + 2
    run(config(tiny_ogbench_dir, f"offline_steps={stop}", "save_interval=1000000", "eval_interval=1000000",
               "log_interval=1"), run_dir)
    assert load_latest_checkpoint(os.path.join(run_dir, "checkpoints"))[0]["step"] == stop
    assert _csv_steps(run_dir) == list(range(1, stop + 1))


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(tmp_path):
    code = ("import sys, time\nfrom deflow_trl.app.signals import GracefulStop\n"
            "with GracefulStop() as stop:\n    print('ready', flush=True)\n"
            "    while True:\n        time.sleep(0.05)\n        if stop.requested: print('requested', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)  # the first: only a request
        assert proc.stdout.readline().strip() == "requested"
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the second: out now
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "SIGINT received" in stderr and "second Ctrl-C: exiting now" in stderr and "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT])
def test_stop_signal_finishes_the_update_and_checkpoints(tiny_ogbench_dir, tmp_path, monkeypatch, signum):
    """A real signal to this process at the 3rd update (from inside it: deterministic)."""
    import deflow_trl.app.training_run as train  # TrainingRun looks make_update (and time) up there

    real = train.make_update

    def make_update(*args, **kwargs):
        update, calls = real(*args, **kwargs), []

        def wrapped(batch):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signum)
            return update(batch)
        return wrapped

    monkeypatch.setattr(train, "make_update", make_update)
    common = ["save_interval=1000", "eval_interval=1000", "log_interval=1"]
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    with pytest.raises(TrainingStopped) as stopped:
        run(config(tiny_ogbench_dir, "offline_steps=50", *common), str(tmp_path))
    assert stopped.value.step == 3 and stopped.value.exit_code == 128 + signum
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored to what they were
    state, _ = load_latest_checkpoint(str(tmp_path / "checkpoints"))
    assert state["step"] == 3 and _csv_steps(str(tmp_path)) == [1, 2, 3]
    monkeypatch.setattr(train, "make_update", real)
    run(config(tiny_ogbench_dir, "offline_steps=5", *common), str(tmp_path))
    assert _csv_steps(str(tmp_path)) == [1, 2, 3, 4, 5]


def test_stop_signal_is_passed_on_to_the_handler_installed_before():
    """submitit's case: its SIGUSR2 handler (requeue, then exit) runs once the loop has stopped, not before;
    Python's default Ctrl-C handler is never called."""
    from deflow_trl.app.signals import GracefulStop

    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and stop.name == "SIGUSR2" and calls == []  # the loop saves first
        assert calls == [signal.SIGUSR2]
        with GracefulStop():
            os.kill(os.getpid(), signal.SIGINT)  # previous: default_int_handler, not called (no KeyboardInterrupt)
        with GracefulStop():
            pass  # no signal: nothing passed on
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, before)


@pytest.mark.slow
def test_submitit_style_sigusr2_saves_then_requeues(tiny_ogbench_dir, tmp_path, monkeypatch):
    """A run inside a launcher that handles SIGUSR2 (submitit): the update finishes, the checkpoint is written,
    then the launcher's handler runs (here it records the saved step and exits as submitit does)."""
    import deflow_trl.app.training_run as train  # TrainingRun looks make_update (and time) up there

    real, seen = train.make_update, []

    def make_update(*args, **kwargs):
        update, calls = real(*args, **kwargs), []

        def wrapped(batch):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGUSR2)
            return update(batch)
        return wrapped

    def launcher_handler(signum, frame):
        seen.append(load_latest_checkpoint(str(tmp_path / "checkpoints"))[0]["step"])
        raise SystemExit(-1)  # submitit: requeue, then exit

    monkeypatch.setattr(train, "make_update", make_update)
    before = signal.signal(signal.SIGUSR2, launcher_handler)
    try:
        with pytest.raises(SystemExit):
            run(config(tiny_ogbench_dir, "offline_steps=50", "save_interval=1000", "eval_interval=1000",
                       "log_interval=1"), str(tmp_path))
        assert signal.getsignal(signal.SIGUSR2) is launcher_handler  # restored
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert seen == [3] and _csv_steps(str(tmp_path)) == [1, 2, 3]


@pytest.mark.slow
def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    lock_path = str(tmp_path / ".lock")
    code = (f"from deflow_trl.app.runlock import FileLock\nimport time\nFileLock({lock_path!r}, 'x').acquire()\n"
            "print('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            FileLock(lock_path, "x").acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
        proc.wait()
    with FileLock(lock_path, "x") as lock:
        assert lock.held
    assert os.path.exists(lock_path)


@pytest.mark.slow
def test_two_generators_on_one_file_one_wins(tmp_path):
    out = str(tmp_path / "data")
    cmd = [sys.executable, "-m", "deflow_trl.data.generate", "--env", "cube-single-play-v0", "--episodes", "2",
           "--episode-length", "30", "--dataset-dir", out, "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    lines = [line for line in loser[2].splitlines() if "error:" in line]
    assert len(lines) == 1 and ("in use by pid" in lines[0] or "exists" in lines[0]) and "Traceback" not in loser[2]
    with np.load(os.path.join(out, "cube-single-play-v0.npz")) as f:
        assert f["terminals"].shape == (60,)
    # Started later, it refuses too (without --force), before generating anything.
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


# ----------------------------------------------------------------------------- 2, 3: the run's record
@pytest.mark.slow
def test_refused_launch_changes_nothing_on_disk(tiny_ogbench_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    first = subprocess.run(_cmd(run_dir, tiny_ogbench_dir, "offline_steps=2", "save_interval=2", "eval_interval=100"),
                           capture_output=True, text=True, env=ENV, timeout=180)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(run_dir)
    assert ".hydra/config.yaml" in before and ".hydra/overrides.yaml" in before
    refused = subprocess.run(_cmd(run_dir, tiny_ogbench_dir, "agent=flow_bc", "seed=7", "offline_steps=4"),
                             capture_output=True, text=True, env=ENV, timeout=180)
    assert refused.returncode == 2
    errors, traceback = _errors(refused.stderr)
    assert len(errors) == 1 and not traceback and "different agent, seed" in errors[0]
    assert _snapshot(run_dir) == before  # .hydra/config.yaml still says deflow, seed 0
    from omegaconf import OmegaConf

    saved = OmegaConf.load(os.path.join(run_dir, ".hydra", "config.yaml"))
    assert saved.agent.name == "deflow" and saved.seed == 0


@pytest.mark.slow
def test_metrics_without_checkpoint_are_refused_unless_overwrite(tiny_ogbench_dir, tmp_path):
    old = tmp_path / "metrics" / "scalars" / "eval"
    old.mkdir(parents=True)
    (old / "success_rate.csv").write_text("100,0.9\n")  # an earlier run that died before its first save
    common = ["offline_steps=2", "save_interval=2", "eval_interval=2"]
    for extra in ([], ["resume=false"]):
        with pytest.raises(ConfigError, match="metrics"):
            run(config(tiny_ogbench_dir, *common, *extra), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "metrics"]  # refused: nothing written
    with pytest.raises(ConfigError, match="pick one"):
        run(config(tiny_ogbench_dir, *common, "overwrite=true", "resume=true"), str(tmp_path))
    run(config(tiny_ogbench_dir, *common, "overwrite=true"), str(tmp_path))
    steps, _ = read_scalar(str(tmp_path), "eval/success_rate")
    assert steps.tolist() == [2]  # the old row at step 100 is gone, not merged


def test_refusal_in_a_fresh_directory_leaves_nothing(tiny_ogbench_dir, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        run(config(tiny_ogbench_dir, "offline_steps=2", "resume=true"), str(tmp_path / "new"))
    assert os.listdir(tmp_path / "new") == []


# ----------------------------------------------------------------------------- 4, 8, 9: early checks
@pytest.mark.parametrize(
    "override,match",
    [
        ("agent.hidden_sizes=[]", "hidden_sizes"),
        ("agent.hidden_sizes=[0]", "hidden_sizes"),
        ("agent.lr=fast", "agent.lr"),
        ("batch_size=abc", "batch_size"),
        ("agent.num_critics=0", "num_critics"),
        ("agent.sampling=best", "sampling"),
        ("agent.backend=fastest", "backend"),
        ("agent.bf16_solves=maybe", "bf16_solves"),
        ("data.storage=disk", "data.storage"),
        ("device=tpu", "device"),
        ("seed=-1", "seed"),
        ("offline_steps=1.5", "offline_steps"),
        ("offline_steps=1e6", "offline_steps"),
        ("logger=wandb", "wandb"),
        ("logger=tensorboard", "tensorboard"),
    ],
)
def test_bad_config_values_fail_before_any_work(tiny_ogbench_dir, tmp_path, monkeypatch, override, match):
    def no_env(*a, **k):
        raise AssertionError("the env was built before the config was checked")

    monkeypatch.setattr("deflow_trl.envs.make_ogbench_env", no_env)
    if match in ("wandb", "tensorboard") and __import__("importlib").util.find_spec(match) is not None:
        pytest.skip(f"{match} is installed here")
    with pytest.raises(ConfigError, match=match):
        run(config(tiny_ogbench_dir, "offline_steps=5", override), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_strings_for_numbers_are_typed(tiny_ogbench_dir):
    from deflow_trl.app.config_schema import validate_config

    cfg = validate_config(config(tiny_ogbench_dir, "batch_size='16'", "agent.lr='0.001'", "+agent.alpha=10"))
    assert cfg.batch_size == 16 and cfg.agent.lr == 0.001 and cfg.agent.alpha == 10  # unknown agent field kept


def test_dataset_of_another_env_fails_before_training(tiny_ogbench_dir, tmp_path):
    data = _copy_data(tiny_ogbench_dir, tmp_path / "data",
                      observations=lambda a: np.concatenate([a["observations"], a["observations"][:, :2]], 1))
    with pytest.raises(ConfigError, match=r"observations \[30\].*observations \[28\]"):
        run(config(data, "offline_steps=5"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_out_of_range_actions_are_refused_not_clipped(tiny_ogbench_dir, tmp_path):
    data = _copy_data(tiny_ogbench_dir, tmp_path / "x5", actions=lambda a: a["actions"] * 5)
    with pytest.raises(DatasetError, match=r"% of action values lie outside \[-1, 1\].*rescale") as err:
        load_ogbench_dataset(CUBE, dataset_dir=data)
    frac = float(str(err.value).split("% of action")[0].rsplit(" ", 1)[-1])
    with np.load(os.path.join(data, "cube-single-play-v0.npz")) as f:
        expected = 100 * (np.abs(f["actions"][:-1]) > 1.001).mean()  # the loader drops each episode's last step
    assert abs(frac - expected) < 5  # the message names the real fraction (about half here)
    with pytest.raises(DatasetError):
        run(config(data, "offline_steps=5"), str(tmp_path / "run"))
    # Round-off just outside the bounds is still clipped.
    near = _copy_data(tiny_ogbench_dir, tmp_path / "near", actions=lambda a: np.clip(a["actions"] * 1.0005, -1.0005, 1.0005))
    assert load_ogbench_dataset(CUBE, dataset_dir=near)["action"].abs().max() < 1


def test_generator_arguments_fail_before_generating(tmp_path, monkeypatch):
    import deflow_trl.data.generate as gen

    monkeypatch.setattr(gen, "_generate", lambda *a, **k: pytest.fail("generated before checking its arguments"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="dataset directory .* cannot be created"):
        generate_dataset("cube-single-play-v0", 2, dataset_dir=str(blocker / "sub"), progress=False)
    with pytest.raises(ValueError, match="val-episodes"):
        generate_dataset("cube-single-play-v0", 2, dataset_dir=str(tmp_path), val_episodes=0, progress=False)
    with pytest.raises(ValueError, match=r"single-task name; generate its base dataset instead: --env cube-single-play-v0 "):
        generate_dataset("cube-single-play-singletask-task1-v0", 2, dataset_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"--env cube-single-v0 "):  # an env id: --env takes env ids too
        generate_dataset("cube-single-singletask-task1-v0", 2, dataset_dir=str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == ["file"]


def test_unwritable_run_directory_fails_first(tiny_ogbench_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="run directory"):
        run(config(tiny_ogbench_dir, "offline_steps=5"), str(blocker / "run"))


@pytest.mark.slow
# ----------------------------------------------------------------------------- 6, 7: memmap, online counters, dataset dir
def test_memmap_run_resumes(tiny_ogbench_dir, tmp_path):
    common = ["data.storage=memmap", "save_interval=2", "eval_interval=100", "log_interval=1"]
    run(config(tiny_ogbench_dir, "offline_steps=2", *common), str(tmp_path))
    # Debris of a killed memmap run (its scratch buffer) must not block the rerun either.
    os.makedirs(tmp_path / "buffer", exist_ok=True)
    (tmp_path / "buffer" / "observation.memmap").write_bytes(b"\0" * 64)
    run(config(tiny_ogbench_dir, "offline_steps=4", *common), str(tmp_path))
    assert load_latest_checkpoint(str(tmp_path / "checkpoints"))[0]["step"] == 4
    assert _csv_steps(str(tmp_path)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_online_counters_survive_resume(tiny_ogbench_dir, tmp_path):
    common = ["offline_steps=2", "eval_interval=100", "log_interval=2", "save_interval=2"]
    run(config(tiny_ogbench_dir, "online_steps=2", *common), str(tmp_path))
    path = os.path.join(tmp_path, "checkpoints", "ckpt_000000004.pt")
    state = torch.load(path, weights_only=True)
    assert state["online_counters"] == {"episodes": 0, "successes": 0}
    state["online_counters"] = {"episodes": 7, "successes": 3}  # as if 7 episodes had ended before the stop
    save_checkpoint(os.path.dirname(path), 4, state)
    run(config(tiny_ogbench_dir, "online_steps=4", *common), str(tmp_path))
    steps, episodes = read_scalar(str(tmp_path), "online/episodes")
    _, rate = read_scalar(str(tmp_path), "online/episode_success_rate")
    assert steps.tolist() == [4, 6] and episodes.tolist() == [0, 7] and rate[-1] == pytest.approx(3 / 7)


@pytest.mark.slow
def test_resume_on_another_dataset_dir_is_refused(tiny_ogbench_dir, tmp_path):
    run(config(tiny_ogbench_dir, "offline_steps=2", "save_interval=2", "eval_interval=100"), str(tmp_path / "run"))
    other = _copy_data(tiny_ogbench_dir, tmp_path / "other")
    with pytest.raises(ConfigError, match="data.dataset_dir"):
        run(config(other, "offline_steps=4"), str(tmp_path / "run"))


@pytest.mark.slow
# ----------------------------------------------------------------------------- 10: corrupt checkpoints, one-line errors
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_resumed(tiny_ogbench_dir, tmp_path):
    common = ["save_interval=2", "eval_interval=100", "log_interval=1", "keep_checkpoints=3"]
    run(config(tiny_ogbench_dir, "offline_steps=4", *common), str(tmp_path))
    ckpts = tmp_path / "checkpoints"
    newest = ckpts / "ckpt_000000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a partial copy / disk error
    with pytest.warns(RuntimeWarning, match="ckpt_000000004.pt is corrupt"):
        run(config(tiny_ogbench_dir, "offline_steps=6", *common), str(tmp_path))
    assert (ckpts / "ckpt_000000004.pt.corrupt").stat().st_size == 100  # kept, never deleted
    assert _csv_steps(str(tmp_path)) == [1, 2, 3, 4, 5, 6]  # resumed from step 2; steps 3-4 logged once
    assert load_latest_checkpoint(str(ckpts))[0]["step"] == 6
    # Every checkpoint corrupt: one clear error, nothing deleted.
    for p in ckpts.glob("ckpt_*.pt"):
        p.write_bytes(b"junk")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="every checkpoint") as err:
        load_latest_checkpoint(str(ckpts))
    assert "\n" not in one_line(err.value)


def test_disk_full_is_named_in_one_line(tmp_path, monkeypatch):
    import deflow_trl.app.checkpoint as ckpt

    real_save = torch.save

    def save_to_full_disk(obj, f, *a, **k):  # the real chain torch.save produces on ENOSPC
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    monkeypatch.setattr(ckpt.torch, "save", save_to_full_disk)
    with pytest.raises(OSError) as err:
        save_checkpoint(str(tmp_path), 1, {"step": 1, "w": torch.zeros(100_000)})
    line = one_line(err.value)
    assert line.startswith("disk full (No space left on device)") and "\n" not in line
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_network_error_and_bad_files_are_one_line(tiny_ogbench_dir, tmp_path, monkeypatch):
    import ogbench.utils

    def offline(*a, **k):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(ogbench.utils, "download_datasets", offline)
    with pytest.raises(ConnectionError) as err:
        load_ogbench_dataset(CUBE, dataset_dir=str(tmp_path / "empty"), download=True)
    line = one_line(err.value)
    assert line.startswith("network error") and "Network is unreachable" in line and "deflow_trl.data.generate" in line
    data = _copy_data(tiny_ogbench_dir, tmp_path / "bad")
    with open(os.path.join(data, "cube-single-play-v0.npz"), "r+b") as f:
        f.truncate(500)
    with pytest.raises(DatasetError) as err:
        load_ogbench_dataset(CUBE, dataset_dir=data)
    assert "\n" not in one_line(err.value) and "corrupt" in one_line(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_ogbench_dataset(CUBE, dataset_dir=str(tmp_path / "none"))
    assert "\n" not in one_line(err.value) and "python -m deflow_trl.data.generate" in one_line(err.value)
    assert one_line(KeyError("a bug")) is None


# ----------------------------------------------------------------------------- 11: sweeps
@pytest.mark.slow
def test_sweep_runs_the_other_jobs_and_lists_the_failed_one(tiny_ogbench_dir, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "deflow_trl.train", "-m", "seed=-1,0", *TINY, f"data.dataset_dir={tiny_ogbench_dir}",
           "offline_steps=2", "eval_interval=2", "save_interval=2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 job(s) of the sweep failed" in done.stderr and "seed must be in [0, 2**31), got -1" in done.stderr
    assert "Traceback" not in done.stderr
    ok = [d for d in sweep.rglob("ckpt_000000002.pt")]
    assert len(ok) == 1 and "seed0" in str(ok[0])


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    """Every global stream resumes exactly (torch, NumPy, Python; CUDA via TorchRL's GlobalRNGState on
    GPU machines); a GPU run's CUDA state on a CPU-only machine is skipped with a warning, not an
    error; checkpoints in the pre-GlobalRNGState layout still resume."""
    import random

    from deflow_trl.app.checkpoint import rng_state, set_rng_state

    def draw():
        return torch.rand(4), np.random.rand(4), random.random()

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    save_checkpoint(str(tmp_path), 1, {"step": 1, "rng": rng_state()})
    expected = draw()
    saved = load_latest_checkpoint(str(tmp_path))[0]["rng"]  # torch.load(weights_only=True)
    set_rng_state(saved)
    got = draw()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]

    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="CUDA RNG state but this machine has no such device"):
            set_rng_state({**saved, "torch_cuda": [torch.zeros(16, dtype=torch.uint8)]})
        assert torch.equal(draw()[0], expected[0])  # the CPU stream was still restored

    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    np_state, py_state = np.random.get_state(), random.getstate()
    old_layout = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "numpy_pos": int(np_state[2]), "python": torch.tensor(py_state[1], dtype=torch.int64),
                  "python_version": int(py_state[0])}
    expected = draw()
    set_rng_state(old_layout)
    got = draw()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
