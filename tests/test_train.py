"""The Hydra training app: a run end to end, exact resume, SIGKILL safety, bad configs, online, sweeps."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from deflow_trl.app.checkpoint import load_latest_checkpoint
from deflow_trl.app.plot import read_scalar
from deflow_trl.app.train import CONFIG_DIR, ConfigError, run

TINY = [
    "agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2", "batch_size=16", "eval_episodes=1",
    "progress=false", "data.generate_if_missing=false", "compile_update=false", "agent.backend=eager",
]


def config(dataset_dir, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*TINY, f"data.dataset_dir={dataset_dir}", *overrides])


def test_run_writes_metrics_checkpoints_and_plot(tiny_ogbench_dir, tmp_path):
    cfg = config(tiny_ogbench_dir, "offline_steps=12", "eval_interval=6", "log_interval=3", "save_interval=4", "keep_checkpoints=2")
    result = run(cfg, str(tmp_path))
    assert 0.0 <= result["success_rate"] <= 1.0 and result["step"] == 12
    steps, _ = read_scalar(str(tmp_path), "eval/success_rate")
    assert steps.tolist() == [6, 12]
    steps, values = read_scalar(str(tmp_path), "train/loss_qvalue")
    assert steps.tolist() == [3, 6, 9, 12] and torch.isfinite(torch.tensor(values)).all()
    steps, rates = read_scalar(str(tmp_path), "time/steps_per_s")  # throughput, evaluation time left out
    assert steps.tolist() == [3, 6, 9, 12] and (rates > 0).all() and np.isfinite(rates).all()
    steps, seconds = read_scalar(str(tmp_path), "time/eval_seconds")
    assert steps.tolist() == [6, 12] and (seconds > 0).all()
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert ckpts == ["ckpt_000000008.pt", "ckpt_000000012.pt"]  # keep the last K=2
    state = torch.load(tmp_path / "checkpoints" / ckpts[-1], weights_only=True)
    assert state["step"] == 12 and "log_alpha" in state["loss"]
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000


def test_resume_continues_exactly(tiny_ogbench_dir, tmp_path):
    common = ["eval_interval=100", "log_interval=5", "save_interval=5"]
    straight = tmp_path / "straight"
    run(config(tiny_ogbench_dir, "offline_steps=10", *common), str(straight))
    split = tmp_path / "split"
    run(config(tiny_ogbench_dir, "offline_steps=5", *common), str(split))
    # Scramble the global RNGs: resume must restore them from the checkpoint.
    torch.manual_seed(1234)
    random.seed(1234)
    run(config(tiny_ogbench_dir, "offline_steps=10", *common), str(split))
    a, _ = load_latest_checkpoint(str(straight / "checkpoints"))
    b, _ = load_latest_checkpoint(str(split / "checkpoints"))
    assert a["step"] == b["step"] == 10
    for key, value in a["loss"].items():
        assert torch.equal(value, b["loss"][key]), key
    assert torch.equal(a["rng"]["torch_cpu"], b["rng"]["torch_cpu"])
    assert a["rng"]["python"] == b["rng"]["python"] and torch.equal(a["rng"]["numpy"][1], b["rng"]["numpy"][1])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_init_from_branches_a_new_run_that_continues_exactly_as_its_source(tiny_ogbench_dir, tmp_path):
    """init_from: a new run directory starts from another run's checkpoint (weights, optimiser, step, RNG);
    with the same settings it ends bit-identical to the source run, with the source's history up to the branch."""
    common = ["offline_steps=10", "eval_interval=5", "log_interval=5", "save_interval=5"]
    source = tmp_path / "source"
    run(config(tiny_ogbench_dir, *common), str(source))
    before = sorted(os.listdir(source / "checkpoints"))
    branch = tmp_path / "branch"
    torch.manual_seed(1234)  # scrambled: the branch must take the source's RNG state
    run(config(tiny_ogbench_dir, *common, f"init_from={source}/checkpoints/ckpt_000000005.pt"), str(branch))
    assert sorted(os.listdir(source / "checkpoints")) == before  # the source is only read
    a, _ = load_latest_checkpoint(str(source / "checkpoints"))
    b, _ = load_latest_checkpoint(str(branch / "checkpoints"))
    assert a["step"] == b["step"] == 10 and sorted(os.listdir(branch / "checkpoints")) == ["ckpt_000000010.pt"]
    for key, value in a["loss"].items():
        assert torch.equal(value, b["loss"][key]), key
    for name in ("train/loss_qvalue", "eval/success_rate"):
        (sa, va), (sb, vb) = read_scalar(str(source), name), read_scalar(str(branch), name)
        assert sa.tolist() == sb.tolist() == [5, 10] and np.array_equal(va, vb), name
    # Rerunning the branch resumes its own checkpoint; init_from is then unused.
    run(config(tiny_ogbench_dir, *common[1:], "offline_steps=12", f"init_from={source}"), str(branch))
    assert load_latest_checkpoint(str(branch / "checkpoints"))[0]["step"] == 12


def test_init_from_refuses_another_agent_or_a_missing_source(tiny_ogbench_dir, tmp_path):
    run(config(tiny_ogbench_dir, "offline_steps=2", "save_interval=2", "eval_interval=100"), str(tmp_path / "source"))
    for overrides, match in ((["agent.hidden_sizes=[16]"], "different agent"),
                             (["env=puzzle_3x3"], "different agent and dataset"),  # δ, γ come with the suite
                             ([], "no such checkpoint file or run directory")):
        source = tmp_path / ("source" if overrides else "missing")
        with pytest.raises(ConfigError, match=match):
            run(config(tiny_ogbench_dir, "offline_steps=4", f"init_from={source}", *overrides), str(tmp_path / "new"))
        assert not (tmp_path / "new" / "metrics").exists() and not (tmp_path / "new" / ".hydra").exists()


@pytest.mark.slow
def test_compiled_update_and_sampler_in_the_app(tiny_ogbench_dir, tmp_path):
    """The defaults of a full run: compiled update step, compiled policy sampler."""
    cfg = config(tiny_ogbench_dir, "offline_steps=4", "eval_interval=4", "save_interval=4", "log_interval=2",
                 "compile_update=true", "agent.backend=compile", "agent.hidden_sizes=[8]", "agent.num_flow_steps=2")
    result = run(cfg, str(tmp_path))
    assert result["step"] == 4 and 0 <= result["success_rate"] <= 1
    steps, values = read_scalar(str(tmp_path), "train/loss_qvalue")
    assert steps.tolist() == [2, 4] and torch.isfinite(torch.tensor(values)).all()


def test_resume_refuses_an_existing_run_or_changed_settings(tiny_ogbench_dir, tmp_path):
    run(config(tiny_ogbench_dir, "offline_steps=2", "save_interval=2", "eval_interval=100"), str(tmp_path))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run(config(tiny_ogbench_dir, "offline_steps=4", "resume=false"), str(tmp_path))
    with pytest.raises(ConfigError, match="different agent"):
        run(config(tiny_ogbench_dir, "offline_steps=4", "agent.target_divergence=0.5"), str(tmp_path))


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (["agent.target_divergence=0"], ConfigError, "target_divergence"),
        (["agent.target_divergence=-0.1"], ConfigError, "target_divergence"),
        (["env.name=cube-quintuple-play"], ConfigError, "unknown env"),
        (["batch_size=100000"], ConfigError, "larger than the dataset"),
        (["eval_episodes=0"], ConfigError, "eval_episodes"),
        (["agent.num_flow_steps=0"], ConfigError, "num_flow_steps"),
        (["task=7"], ConfigError, "task"),
        (["env=scene"], FileNotFoundError, "deflow_trl.data.generate"),  # no scene data in the tiny dir
    ],
)
def test_bad_configs_fail_before_any_work(tiny_ogbench_dir, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        run(config(tiny_ogbench_dir, "offline_steps=5", *overrides), str(tmp_path))
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "checkpoints").exists()


def test_batched_evaluation_env_is_built_once_and_closed(tiny_ogbench_dir, tmp_path, monkeypatch):
    """eval_envs > 1: one batched env for all of the run's evaluations (building one costs ≈ 2 s per env),
    closed when the run ends."""
    import deflow_trl.app.evaluator

    built = []
    real = deflow_trl.app.evaluator.make_batched_env

    def counting(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(deflow_trl.app.evaluator, "make_batched_env", counting)
    cfg = config(tiny_ogbench_dir, "offline_steps=4", "eval_interval=2", "eval_envs=2", "eval_episodes=2",
                 "log_interval=2", "save_interval=100")
    run(cfg, str(tmp_path))
    steps, _ = read_scalar(str(tmp_path), "eval/success_rate")
    assert steps.tolist() == [2, 4] and len(built) == 1 and built[0].is_closed


def test_offline_to_online_adds_transitions_to_the_buffer(tiny_ogbench_dir, tmp_path):
    cfg = config(
        tiny_ogbench_dir, "offline_steps=4", "online_steps=12", "eval_interval=100", "log_interval=4",
        "save_interval=8", "online.freeze_flow=true",
    )
    run(cfg, str(tmp_path))
    state, _ = load_latest_checkpoint(str(tmp_path / "checkpoints"))
    assert state["step"] == 16
    online = state["online_data"]
    assert online["observation"].shape == (12, 28) and online["next"]["reward"].shape == (12, 1)
    steps, sizes = read_scalar(str(tmp_path), "online/buffer_size")
    n = 147  # 3 episodes of 50 steps -> 147 transitions (see conftest)
    assert steps.tolist() == [8, 12, 16] and sizes.tolist() == [n + 4, n + 8, n + 12]
    steps, rates = read_scalar(str(tmp_path), "online/steps_per_s")  # the online phase's throughput is logged
    assert steps.tolist() == [8, 12, 16] and (rates > 0).all() and np.isfinite(rates).all()
    # The checkpointed online part is exactly the last 12 transitions of the buffer, in order.
    assert online["next"]["observation"][:-1].equal(online["observation"][1:])  # one continuing episode
    # Resuming restores them: 8 more online steps continue after the 12 saved ones.
    run(config(tiny_ogbench_dir, "offline_steps=4", "online_steps=20", "eval_interval=100", "log_interval=4",
               "save_interval=8", "online.freeze_flow=true"), str(tmp_path))
    steps, sizes = read_scalar(str(tmp_path), "online/buffer_size")
    assert steps.tolist()[-2:] == [20, 24] and sizes.tolist()[-2:] == [n + 16, n + 20]


def test_flow_bc_trains_only_the_flow(tiny_ogbench_dir, tmp_path):
    cfg = config(tiny_ogbench_dir, "agent=flow_bc", "offline_steps=6", "eval_interval=6", "save_interval=6")
    run(cfg, str(tmp_path))
    state, _ = load_latest_checkpoint(str(tmp_path / "checkpoints"))
    opt_state = state["optimizer"]["state"]
    names = list(state["loss"].keys())
    assert state["config"]["agent"]["refine"] is False
    # Adam keeps state only for the parameters that received gradients: the velocity field's.
    velocity = [k for k in names if ".velocity." in k]
    assert len(opt_state) == len(velocity)


def _launch(run_dir, dataset_dir, steps, *extra):
    cmd = [sys.executable, "-m", "deflow_trl.train", *TINY, f"data.dataset_dir={dataset_dir}",
           f"offline_steps={steps}", "save_interval=1", "eval_interval=100000", "log_interval=1",
           f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_any_moment_never_corrupts_and_resumes(tiny_ogbench_dir, tmp_path):
    """Checkpoint every step, SIGKILL at random moments (often mid-save): the
    latest checkpoint always loads with weights_only=True, and resuming loses
    at most one save interval."""
    run_dir = tmp_path / "run"
    ckpt_dir = str(run_dir / "checkpoints")
    rng = random.Random(0)
    last_step = 0
    for _ in range(3):
        proc = _launch(run_dir, tiny_ogbench_dir, 100_000)
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until this process has saved progress beyond last time
            found = load_latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
            if found is not None and found[0]["step"] > last_step:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state, path = load_latest_checkpoint(ckpt_dir)  # must load (weights_only=True)
        steps_logged, _ = read_scalar(str(run_dir), "train/loss_qvalue")
        # At most one save interval (1 step) of work is lost.
        assert steps_logged.max() - state["step"] <= 1
        assert state["step"] >= last_step
        last_step = state["step"]
    final = last_step + 3
    proc = _launch(run_dir, tiny_ogbench_dir, final)
    assert proc.wait(timeout=180) == 0, proc.stderr.read().decode()[-2000:]
    state, _ = load_latest_checkpoint(ckpt_dir)
    assert state["step"] == final
    assert not [f for f in os.listdir(ckpt_dir) if f.endswith(".tmp")]




def test_slowdown_watch_warns_once_against_the_runs_own_warm_rate():
    """Fake rates, no timing: warm-up skipped, baseline = the fastest of the next windows, one warning."""
    from deflow_trl.app.progress import SlowdownWatch

    watch = SlowdownWatch(threads=2, cpus=2)
    assert [watch.observe(r) for r in (5.0, 90.0, 100.0, 95.0)] == [None] * 4  # 5/s: compiling, not a baseline
    assert watch.baseline == 100.0 and not watch.slow
    assert watch.observe(40.0) is None and not watch.slow  # slower, not under a third
    warning = watch.observe(30.0)
    assert "30.0 steps/s from 100.0 steps/s" in warning and "torch runs 2 threads on 2 cores" in warning
    assert "another process" in warning and "threads=1" in warning
    assert watch.slow and watch.postfix() == {"slow": "30/s (was 100/s): CPU shared?"}
    assert watch.observe(10.0) is None and watch.slow  # said once; the bar keeps showing it
    assert watch.observe(100.0) is None and watch.postfix() == {}  # recovered
    assert watch.observe(10.0) is None  # a second drop: still once per run
    watch.restart()  # a new phase (online): its own warm-up and baseline, the warning stays given
    assert [watch.observe(r) for r in (1.0, 10.0, 10.0, 10.0, 3.0)] == [None] * 5 and watch.slow
    started_slow = SlowdownWatch()
    assert all(started_slow.observe(r) is None for r in (1.0, 2.0, 2.0, 2.0, 2.0, 1.0))  # never above itself


def test_a_run_that_slows_down_says_so_once(tiny_ogbench_dir, tmp_path, monkeypatch, caplog):
    """A patched clock: 1 ms per update for 10 updates, then 10 ms; the rate logged says so and one warning
    names both rates (log and train.log)."""
    import types

    import deflow_trl.app.training_run as train  # TrainingRun looks make_update (and time) up there

    now, real = [0.0], train.make_update

    def make_update(*args, **kwargs):
        update, calls = real(*args, **kwargs), []

        def timed(batch):
            calls.append(1)
            now[0] += 0.001 if len(calls) <= 10 else 0.01
            return update(batch)
        return timed

    monkeypatch.setattr(train, "make_update", make_update)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    run(config(tiny_ogbench_dir, "offline_steps=20", "log_interval=2", "eval_interval=100", "save_interval=100"),
        str(tmp_path))
    steps, rates = read_scalar(str(tmp_path), "time/steps_per_s")
    assert steps.tolist() == list(range(2, 21, 2))
    np.testing.assert_allclose(rates, [1000.0] * 5 + [100.0] * 5)
    said = [r.getMessage() for r in caplog.records if "training slowed" in r.getMessage()]
    assert len(said) == 1 and "100.0 steps/s from 1000.0 steps/s" in said[0] and "threads=1" in said[0]
    with open(tmp_path / "train.log") as f:
        assert f.read().count("training slowed") == 1


def test_adaptive_threads_follow_the_other_processes_load(tiny_ogbench_dir, tmp_path, monkeypatch, caplog):
    """threads=adaptive: at each log point the thread count becomes the usable CPUs minus those others keep busy
    (here a fake neighbour appears after the first window), logged and recorded as time/threads."""
    import logging

    from deflow_trl import threads

    loads = iter([None, 0.0, 1.0, 1.0, 1.0, 1.0])  # first call opens the window; a neighbour from the 2nd log point
    monkeypatch.setattr(threads.OtherLoad, "sample", lambda self: next(loads, 1.0))
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="deflow_trl.app.train"):
            run(config(tiny_ogbench_dir, "threads=adaptive", "offline_steps=12", "eval_interval=100", "log_interval=3",
                       "save_interval=100"), str(tmp_path))
        steps, counts = read_scalar(str(tmp_path), "time/threads")
        usable = int(counts[0])  # the run's starting count (usable CPUs, or an exported OMP_NUM_THREADS)
        assert usable == (int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else threads.usable_cpus())
        assert steps.tolist() == [3, 6, 9, 12]
        assert counts.tolist() == [usable, max(1, usable - 1), max(1, usable - 1), max(1, usable - 1)]
        said = [r.getMessage() for r in caplog.records if "threads=adaptive" in r.getMessage()]
        assert said == ([f"threads {usable} -> {usable - 1}: other processes keep 1.0 CPU(s) busy (threads=adaptive)"]
                        if usable > 1 else [])
    finally:
        torch.set_num_threads(before)
