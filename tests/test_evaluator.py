"""eval_async=true: evaluation in a worker process gives the inline evaluation's numbers, leaves training
unchanged, survives a SIGKILL while it runs (the checkpoint's step is evaluated again) and leaves no process."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_train import TINY, config

from deflow_trl.app.checkpoint import load_latest_checkpoint
from deflow_trl.app.plot import read_scalar
from deflow_trl.app.train import ConfigError, run

EVAL = ["eval_episodes=2", "eval_interval=2", "log_interval=2"]
SCALARS = ["eval/success_rate", "eval/return_mean", "eval/length_mean", "train/loss_qvalue", "train/loss_flow"]


def _scalars(run_dir):
    return {name: read_scalar(str(run_dir), name) for name in SCALARS}


@pytest.mark.slow
def test_background_evaluation_equals_inline_and_training_is_unchanged(tiny_ogbench_dir, tmp_path):
    threads = torch.get_num_threads()
    inline = run(config(tiny_ogbench_dir, "offline_steps=6", "save_interval=4", *EVAL), str(tmp_path / "inline"))
    background = run(config(tiny_ogbench_dir, "offline_steps=6", "save_interval=4", "eval_async=true", *EVAL),
                     str(tmp_path / "async"))
    assert torch.get_num_threads() == threads  # the trainer's threads are left alone
    a, b = _scalars(tmp_path / "inline"), _scalars(tmp_path / "async")
    for name in SCALARS:
        assert a[name][0].tolist() == b[name][0].tolist(), name
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)
    assert a["eval/success_rate"][0].tolist() == [2, 4, 6]
    assert a["eval/length_mean"][1].min() > 1  # real episodes, not empty ones
    steps, seconds = read_scalar(str(tmp_path / "async"), "time/eval_seconds")  # the worker's own time
    assert steps.tolist() == [2, 4, 6] and (seconds > 0).all()
    assert {k: background[k] for k in ("success_rate", "return_mean", "step")} == \
        {k: inline[k] for k in ("success_rate", "return_mean", "step")}
    # The checkpoints hold the same weights, and no evaluation is left pending in the last one.
    for step in (4, 6):
        sa = torch.load(tmp_path / "inline" / "checkpoints" / f"ckpt_{step:09d}.pt", weights_only=True)
        sb = torch.load(tmp_path / "async" / "checkpoints" / f"ckpt_{step:09d}.pt", weights_only=True)
        assert all(torch.equal(v, sb["loss"][k]) for k, v in sa["loss"].items())
    assert "eval_pending" not in sb


def _children(pid):
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found |= {int(c) for c in f.read().split()}
    return found


def _wait_until_gone(pids, message, timeout=30.0):
    """Wait until none of ``pids`` is alive (a zombie waiting for its reaper counts as gone)."""
    deadline = time.time() + timeout
    while any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids):
        assert time.time() < deadline, message
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker's pid")
def test_sigkill_while_evaluating_resumes_and_evaluates_that_step_again(tiny_ogbench_dir, tmp_path):
    """The worker takes seconds to start, so the evaluation of step 2 is still running when the checkpoint of
    step 2 is written (it records it) and when the trainer is killed; the rerun evaluates step 2 first, from
    that checkpoint, and ends with the inline run's numbers. The killed trainer's worker exits by itself."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deflow_trl.train", *TINY, f"data.dataset_dir={tiny_ogbench_dir}", "offline_steps=4",
           "save_interval=2", "eval_async=true", *EVAL, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run_dir / "checkpoints" / "ckpt_000000002.pt"
    deadline = time.time() + 120
    while not first.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    children = _children(proc.pid)
    assert children  # the evaluation worker (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state, _ = load_latest_checkpoint(str(run_dir / "checkpoints"))
    assert state["step"] == 2 and state["eval_pending"] == [2]
    assert read_scalar(str(run_dir), "eval/success_rate")[0].tolist() == []  # step 2's result never arrived
    _wait_until_gone(children, "the evaluation worker outlived its killed trainer")

    rerun = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    run(config(tiny_ogbench_dir, "offline_steps=4", "save_interval=2", *EVAL), str(tmp_path / "inline"))
    a, b = _scalars(tmp_path / "inline"), _scalars(run_dir)
    assert b["eval/success_rate"][0].tolist() == [2, 4]
    for name in ("eval/success_rate", "eval/return_mean", "eval/length_mean"):
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)
    with open(run_dir / "train.log") as f:
        assert "evaluating step 2 again" in f.read()


def test_eval_async_with_video_fails_before_any_work(tiny_ogbench_dir, tmp_path):
    with pytest.raises(ConfigError, match="logger.video records in the training process"):
        run(config(tiny_ogbench_dir, "offline_steps=2", "eval_async=true", "logger.video=true"), str(tmp_path))
    assert not os.listdir(tmp_path) or set(os.listdir(tmp_path)) <= {".lock"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the worker's pid")
def test_ctrl_c_to_the_process_group_waits_for_the_evaluation_then_saves(tiny_ogbench_dir, tmp_path):
    """Ctrl-C in a terminal reaches every process of the group: the worker ignores it and finishes the running
    evaluation, whose result is logged before the stop checkpoint; the trainer exits 130 and the worker with it."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deflow_trl.train", *TINY, f"data.dataset_dir={tiny_ogbench_dir}",
           "offline_steps=100000", "save_interval=100000", "eval_async=true", "eval_episodes=2", "eval_interval=2",
           "log_interval=2", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while not read_scalar(str(run_dir), "train/loss_qvalue")[0].size:  # step 2 logged: its evaluation is running
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    children = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=180)[1].decode()
    assert proc.returncode == 130, stderr[-2000:]
    state, _ = load_latest_checkpoint(str(run_dir / "checkpoints"))
    evaluated, _ = read_scalar(str(run_dir), "eval/success_rate")
    assert evaluated.size and evaluated[0] == 2 and evaluated.max() <= state["step"]  # logged, none lost
    assert "eval_pending" not in state
    _wait_until_gone(children, "the evaluation worker outlived its trainer")
