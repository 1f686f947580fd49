"""Several seeds in one process through the app (``seeds=[...]``, ``seeds_per_job``; deflow_trl/app/seed_group.py).

Seed s of a group must be the lone run ``seed=s`` (eager or compiled: both draw the same noise): same per-step
losses and final weights to float32 re-association (vmap sums [G, B] matmuls in another order). Measured here on a
2-core CPU (hidden (32, 32), K = 2, batch 16, 12 updates): losses within 1e-5 relative, weights within 1e-6 of
each tensor's largest entry; the bounds below leave a margin. A group resumed from its seeds' checkpoints continues
bit for bit; a lone run continues from a group's seed directory (and the converse) to the same tolerance.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from deflow_trl.app import seed_group
from deflow_trl.app.checkpoint import load_latest_checkpoint
from deflow_trl.app.plot import read_scalar
from deflow_trl.app.train import CONFIG_DIR, ConfigError, run

TINY = [
    "agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2", "batch_size=16", "eval_episodes=1",
    "progress=false", "data.generate_if_missing=false", "compile_update=false", "agent.backend=eager",
]
LOSSES = ("train/loss_qvalue", "train/loss_flow")  # at least these (flow BC logs NaN for the critic's)
LOSS_RTOL, WEIGHT_TOL = 2e-4, 2e-5


def config(dataset_dir, *overrides, agent=None):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*([f"agent={agent}"] if agent else []), *TINY,
                                           f"data.dataset_dir={dataset_dir}", *overrides])


def final_state(run_dir):
    state, _ = load_latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    return state


def assert_same_run(a, b, *, exact=False):
    """Two run directories: same logged losses per step and same final weights (bit for bit when ``exact``)."""
    names = sorted(f"train/{f[:-4]}" for f in os.listdir(os.path.join(a, "metrics", "scalars", "train")))
    assert set(LOSSES) <= set(names)
    for name in names:
        sa, va = read_scalar(str(a), name)
        sb, vb = read_scalar(str(b), name)
        assert sa.tolist() == sb.tolist() and len(sa) > 0, name
        if exact:
            assert np.array_equal(va, vb), name
        else:
            np.testing.assert_allclose(va, vb, rtol=LOSS_RTOL, atol=1e-6, err_msg=name, equal_nan=True)
    x, y = final_state(a), final_state(b)
    assert x["step"] == y["step"]
    for key, want in x["loss"].items():
        got = y["loss"][key]
        if exact:
            assert torch.equal(got, want), key
        else:
            assert ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item() < WEIGHT_TOL, key


@pytest.mark.parametrize("agent,lone_compiled", [("deflow", False), ("fql", False), ("flow_bc", False),
                                                 ("deflow", True)])
def test_each_seed_of_a_group_is_its_lone_run(tiny_ogbench_dir, tmp_path, agent, lone_compiled):
    """...also against a compiled lone run: its update draws the same noise (eagerly) as the group's."""
    common = ["offline_steps=12", "log_interval=1", "eval_interval=6", "save_interval=6"]
    results = run(config(tiny_ogbench_dir, *common, "seeds=[0,1]", agent=agent), str(tmp_path / "group" / "seed0"))
    assert sorted(results) == [0, 1] and all(r["step"] == 12 for r in results.values())
    for seed in (0, 1):
        group_dir = tmp_path / "group" / f"seed{seed}"
        recorded = OmegaConf.load(group_dir / ".hydra" / "config.yaml")
        assert recorded.seed == seed and recorded.seeds is None and recorded.compile_update is False
        assert (group_dir / "learning_curve.png").is_file()
        steps, _ = read_scalar(str(group_dir), "eval/success_rate")
        assert steps.tolist() == [6, 12]
        lone_dir = tmp_path / "lone" / f"seed{seed}"
        run(config(tiny_ogbench_dir, *common, f"seed={seed}", f"compile_update={str(lone_compiled).lower()}",
                   agent=agent), str(lone_dir))
        assert_same_run(lone_dir, group_dir)
    a, b = final_state(tmp_path / "group" / "seed0"), final_state(tmp_path / "group" / "seed1")
    assert not torch.equal(a["rng"]["torch_cpu"], b["rng"]["torch_cpu"])  # each seed checkpoints its own RNG stream


def test_a_killed_group_resumes_exactly_even_between_two_seeds_checkpoints(tiny_ogbench_dir, tmp_path):
    common = ["log_interval=5", "eval_interval=100", "save_interval=5", "seeds=[0,1]"]
    run(config(tiny_ogbench_dir, "offline_steps=15", *common), str(tmp_path / "straight" / "seed0"))
    split = tmp_path / "split"
    run(config(tiny_ogbench_dir, "offline_steps=10", *common), str(split / "seed0"))
    os.unlink(split / "seed1" / "checkpoints" / "ckpt_000000010.pt")  # killed after seed 0's save, before seed 1's
    torch.manual_seed(1234)  # the caller's RNG must not matter
    run(config(tiny_ogbench_dir, "offline_steps=15", *common), str(split / "seed0"))  # both resume from step 5
    for seed in (0, 1):
        assert_same_run(tmp_path / "straight" / f"seed{seed}", split / f"seed{seed}", exact=True)


def test_lone_runs_continue_a_group_and_a_group_continues_lone_runs(tiny_ogbench_dir, tmp_path):
    common = ["log_interval=5", "eval_interval=100", "save_interval=5"]
    run(config(tiny_ogbench_dir, "offline_steps=10", *common, "seeds=[0,1]"), str(tmp_path / "group" / "seed0"))
    # seed 1 of a 5-step group, continued alone
    run(config(tiny_ogbench_dir, "offline_steps=5", *common, "seeds=[0,1]"), str(tmp_path / "mixed" / "seed0"))
    run(config(tiny_ogbench_dir, "offline_steps=10", *common, "seed=1"), str(tmp_path / "mixed" / "seed1"))
    assert_same_run(tmp_path / "group" / "seed1", tmp_path / "mixed" / "seed1")
    # lone runs of seeds 0 and 1 to step 5, continued as a group
    for seed in (0, 1):
        run(config(tiny_ogbench_dir, "offline_steps=5", *common, f"seed={seed}"), str(tmp_path / "lone" / f"seed{seed}"))
    run(config(tiny_ogbench_dir, "offline_steps=10", *common, "seeds=[0,1]"), str(tmp_path / "lone" / "seed0"))
    for seed in (0, 1):
        assert_same_run(tmp_path / "group" / f"seed{seed}", tmp_path / "lone" / f"seed{seed}")


def test_seeds_per_job_trains_the_seeds_from_seed_in_sibling_directories(tiny_ogbench_dir, tmp_path, capsys):
    run(config(tiny_ogbench_dir, "offline_steps=2", "eval_interval=2", "seed=3", "seeds_per_job=2"),
        str(tmp_path / "seed3"))
    printed = capsys.readouterr().out  # each line says which seed it is about
    assert "step 2 (seed 3): success rate" in printed and "step 2 (seed 4): success rate" in printed
    assert "-task2-v0 (seed 4): success rate" in printed
    assert sorted(os.listdir(tmp_path)) == ["seed3", "seed4"]
    assert OmegaConf.load(tmp_path / "seed4" / ".hydra" / "config.yaml").seed == 4
    run(config(tiny_ogbench_dir, "offline_steps=2", "eval_interval=2", "seeds=[5]"), str(tmp_path / "custom"))
    assert os.listdir(tmp_path / "custom") == ["seed5"]  # a run dir not named seed<seed>: one folder per seed in it
    os.makedirs(tmp_path / "default" / "seed0")  # as Hydra makes it for the default seed=0
    run(config(tiny_ogbench_dir, "offline_steps=2", "eval_interval=2", "seeds=[7]"), str(tmp_path / "default" / "seed0"))
    assert os.listdir(tmp_path / "default") == ["seed7"]  # no empty seed0/ left behind


def test_the_paper_sweep_packs_seeds_per_job():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        packed = compose("train", overrides=["+experiment=paper", "seeds_per_job=8"], return_hydra_config=True)
        plain = compose("train", overrides=["+experiment=paper"], return_hydra_config=True)
    assert packed.hydra.sweeper.params.seed == "range(0,8,8)"  # one job per task, seeds 0..7 in it
    assert plain.hydra.sweeper.params.seed == "range(0,8,1)"


@pytest.mark.parametrize("overrides,match", [
    (["seeds=[]"], r"seeds=\[\] is empty"),
    (["seeds=[0,1,0]"], r"repeats \[0\]"),
    (["seeds=[0,1]", "seeds_per_job=2"], "both name a group"),
    (["seeds_per_job=0"], "seeds_per_job must be >= 1"),
    (["seeds=[0,1]", "online_steps=5"], "offline-to-online"),
    (["seeds=[0,1]", "eval_async=true"], "eval_async"),
    (["seeds=[0,1]", "agent.bf16_solves=true"], "bf16_solves"),
])
def test_bad_seed_groups_are_one_line_and_leave_nothing(tiny_ogbench_dir, tmp_path, overrides, match):
    agent = [o.split("=")[1] for o in overrides if o.startswith("agent=")]
    rest = [o for o in overrides if not o.startswith("agent=")]
    with pytest.raises(ConfigError, match=match):
        run(config(tiny_ogbench_dir, "offline_steps=2", *rest, agent=agent[0] if agent else None),
            str(tmp_path / "seed0"))
    assert not any(os.scandir(tmp_path))


def test_more_seeds_than_memory_allows_is_refused_before_training(tiny_ogbench_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(seed_group, "available_memory_bytes", lambda device: 2**16)
    with pytest.raises(ConfigError, match=r"4 seeds need about .* GiB .* available on cpu: use fewer seeds"):
        run(config(tiny_ogbench_dir, "offline_steps=2", "seeds=[0,1,2,3]"), str(tmp_path / "seed0"))
    assert not any(os.scandir(tmp_path))  # refused before any record: not even the seeds' directories


def test_seeds_with_an_explicit_seed_is_one_line(tiny_ogbench_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "deflow_trl.train", *TINY, f"data.dataset_dir={tiny_ogbench_dir}",
                          "seed=1", "seeds=[0,1]", f"hydra.run.dir={tmp_path / 'seed1'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: seeds=[...] trains the seeds it lists; drop seed=1" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "seed1").exists()


def test_a_stop_signal_checkpoints_every_seed_and_the_group_resumes_exactly(tiny_ogbench_dir, tmp_path, monkeypatch):
    """SIGTERM at the group's 3rd update (sent from inside: deterministic): the update finishes, every seed saves
    step 3, TrainingStopped names it; launched again, the group ends bit-identical to an uninterrupted one."""
    import signal

    from deflow_trl.app.train import TrainingStopped
    from deflow_trl.seeds import SeedGroup

    common = ["save_interval=1000", "eval_interval=1000", "log_interval=1", "seeds=[0,1]"]
    run(config(tiny_ogbench_dir, "offline_steps=6", *common), str(tmp_path / "straight" / "seed0"))
    real, calls = SeedGroup.update, []

    def update(self, sample):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, sample)

    monkeypatch.setattr(SeedGroup, "update", update)
    with pytest.raises(TrainingStopped) as stopped:
        run(config(tiny_ogbench_dir, "offline_steps=6", *common), str(tmp_path / "stopped" / "seed0"))
    assert stopped.value.step == 3 and stopped.value.signal_name == "SIGTERM"
    for seed in (0, 1):
        state, _ = load_latest_checkpoint(str(tmp_path / "stopped" / f"seed{seed}" / "checkpoints"))
        assert state["step"] == 3 and state["config"]["seed"] == seed
    monkeypatch.setattr(SeedGroup, "update", real)
    run(config(tiny_ogbench_dir, "offline_steps=6", *common), str(tmp_path / "stopped" / "seed0"))
    for seed in (0, 1):
        assert_same_run(tmp_path / "straight" / f"seed{seed}", tmp_path / "stopped" / f"seed{seed}", exact=True)


def test_a_paper_sweep_with_seeds_per_job_writes_lone_run_directories_that_summarize_reads(tiny_ogbench_dir, tmp_path,
                                                                                          capsys):
    """One job of the paper experiment packing seeds 0 and 1 (seed=0 seeds_per_job=2 on the command line replaces the
    sweep's seeds), on Hydra's basic launcher; summarize reads its two seed directories as two lone runs."""
    from deflow_trl.app import summarize

    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "deflow_trl.train", "-m", "+experiment=paper", "env=cube_single",
                          "task=1", "seed=0", "seeds_per_job=2", *TINY, f"data.dataset_dir={tiny_ogbench_dir}",
                          "offline_steps=4", "eval_interval=2", f"hydra.sweep.dir={sweep}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Launching 1 jobs" in out.stdout + out.stderr
    summarize.main([str(sweep), "--json", str(tmp_path / "summary.json")])
    import json

    runs = json.load(open(tmp_path / "summary.json"))["runs"]
    assert [(r["status"], r["task"], r["seed"], r["last_eval_step"]) for r in runs] == [
        ("complete", 1, 0, 4), ("complete", 1, 1, 4)]
    assert [r["run_dir"] for r in runs] == [f"cube-single-play/deflow/task1/seed{s}" for s in (0, 1)]


def test_the_seeds_share_one_batched_evaluation_env_and_keep_their_episode_seeds(tiny_ogbench_dir, tmp_path,
                                                                                  monkeypatch):
    """eval_envs > 1: the group builds one batched env for all seeds' evaluations (none per seed) and closes it;
    each seed's evaluation is its lone run's (same episode seeds and noise on the same weights: same returns)."""
    import deflow_trl.app.evaluator

    built = []
    real = seed_group.make_batched_env

    def counting(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(seed_group, "make_batched_env", counting)
    monkeypatch.setattr(deflow_trl.app.evaluator, "make_batched_env", counting)
    common = ["offline_steps=4", "eval_interval=2", "eval_envs=2", "eval_episodes=2", "log_interval=2"]
    run(config(tiny_ogbench_dir, *common, "seeds=[0,1]"), str(tmp_path / "group" / "seed0"))
    assert len(built) == 1 and built[0].is_closed
    for seed in (0, 1):
        run(config(tiny_ogbench_dir, *common, f"seed={seed}"), str(tmp_path / "lone" / f"seed{seed}"))
        steps, lone = read_scalar(str(tmp_path / "lone" / f"seed{seed}"), "eval/return_mean")
        steps_g, group = read_scalar(str(tmp_path / "group" / f"seed{seed}"), "eval/return_mean")
        assert steps.tolist() == steps_g.tolist() == [2, 4]
        np.testing.assert_allclose(group, lone, rtol=1e-5, atol=1e-5)
