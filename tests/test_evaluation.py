"""evaluate(): OGBench's success definition, numbers, reproducibility."""
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from deflow_trl.envs.evaluation import evaluate

CUBE = "cube-single-play-singletask-task1-v0"


class _ScriptedSuccessEnv(EnvBase):
    """Toy env: 1-D, episodes of ``horizon`` steps; ``success`` follows a fixed per-step pattern."""

    def __init__(self, pattern, horizon):
        super().__init__(batch_size=torch.Size([]))
        self.pattern, self.horizon, self.max_episode_steps = pattern, horizon, horizon
        self.observation_spec = Composite(observation=Unbounded(shape=(1,)),
                                          success=Categorical(2, shape=(1,), dtype=torch.bool))
        self.action_spec = Bounded(-1.0, 1.0, shape=(1,))
        self.reward_spec = Unbounded(shape=(1,))

    def _reset(self, td=None, **kw):
        self.t = 0
        f = torch.zeros(1, dtype=torch.bool)
        return TensorDict(observation=torch.zeros(1), success=f, done=f, terminated=f.clone(), truncated=f.clone())

    def _step(self, td):
        s = bool(self.pattern[self.t])
        self.t += 1
        end = self.t >= self.horizon
        return TensorDict(observation=torch.full((1,), float(self.t)), reward=torch.tensor([float(s) - 1]),
                          success=torch.tensor([s]), terminated=torch.tensor([False]),
                          truncated=torch.tensor([end]), done=torch.tensor([end]))

    def _set_seed(self, seed):
        pass


def _const(value=0.0, dim=5):
    return TensorDictModule(lambda obs: torch.full((*obs.shape[:-1], dim), value), ["observation"], ["action"])


def test_success_is_read_at_the_last_step():
    policy = _const(dim=1)
    mid = evaluate(policy, _ScriptedSuccessEnv([0, 1, 1, 0], 4), num_episodes=3, progress=False)
    assert mid["success_rate"] == 0.0 and mid["returns"] == [-2.0] * 3 and mid["lengths"] == [4] * 3
    last = evaluate(policy, _ScriptedSuccessEnv([0, 0, 0, 1], 4), num_episodes=2, progress=False)
    assert last["success_rate"] == 1.0 and last["successes"] == [True, True]
    assert last["return_mean"] == -3.0 and last["length_mean"] == 4.0


def test_numbers_on_ogbench_cube():
    out = evaluate(_const(), CUBE, num_episodes=2, seed=0, progress=False, max_steps=25)
    assert out["num_episodes"] == 2 and out["lengths"] == [25, 25]
    assert out["returns"] == [-25.0, -25.0] and out["success_rate"] == 0.0  # a still arm solves nothing


def test_reproducible_and_seed_dependent():
    seen = []

    def noisy(td):  # random policy that records the states it saw
        seen.append(td["observation"].clone())
        return td.set("action", torch.rand(5) * 2 - 1)

    def run(seed):
        seen.clear()
        out = evaluate(noisy, CUBE, num_episodes=2, seed=seed, progress=False, max_steps=15)
        return out, torch.stack(seen)

    before = torch.get_rng_state()
    (o1, s1), (o2, s2), (_, s3) = run(0), run(0), run(1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert o1 == o2 and torch.equal(s1, s2)
    assert (s1 - s3).abs().max() > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate(_const(), CUBE, num_episodes=0)
    with pytest.raises(ValueError, match="Unknown OGBench single-task env"):
        evaluate(_const(), "cube-single-v0", num_episodes=1)


class _SeededGoalEnv(EnvBase):
    """Toy env: a goal drawn at reset from ``seed``; reward -|a - goal|, success (and the end) within 0.6.

    Returns are continuous functions of the actions, so two runs agree only if every episode saw
    the same goal and the same policy noise."""

    def __init__(self, horizon=6):
        super().__init__(batch_size=torch.Size([]))
        self.horizon, self.max_episode_steps = horizon, horizon
        self.observation_spec = Composite(observation=Unbounded(shape=(3,)),
                                          success=Categorical(2, shape=(1,), dtype=torch.bool))
        self.action_spec = Bounded(-1.0, 1.0, shape=(2,))
        self.reward_spec = Unbounded(shape=(1,))
        self.rng = torch.Generator().manual_seed(0)

    def _reset(self, td=None, seed=None, **kw):
        if seed is not None:
            self.rng.manual_seed(seed)
        self.goal, self.t = torch.rand(2, generator=self.rng) * 2 - 1, 0
        f = torch.zeros(1, dtype=torch.bool)
        return TensorDict(observation=torch.cat([self.goal, torch.zeros(1)]), success=f, done=f,
                          terminated=f.clone(), truncated=f.clone())

    def _step(self, td):
        self.t += 1
        dist = (td["action"] - self.goal).norm()
        success = bool(dist < 0.6)
        end = self.t >= self.horizon
        return TensorDict(observation=torch.cat([self.goal, torch.full((1,), float(self.t))]), reward=-dist.reshape(1),
                          success=torch.tensor([success]), terminated=torch.tensor([success]),
                          truncated=torch.tensor([end and not success]), done=torch.tensor([end or success]))

    def _set_seed(self, seed):
        self.rng.manual_seed(seed)


def _tiny_deflow(obs_dim, act_dim, **kw):
    from deflow_trl import make_deflow

    torch.manual_seed(0)
    return make_deflow(obs_dim, act_dim, hidden_sizes=(16, 16), **kw)[0]


@pytest.mark.parametrize("sampling", ["plain", "best_of_n"])
def test_batched_equals_sequential_with_a_deflow_actor(sampling):
    """The same episodes whether run one at a time or 3 (or 8, more than episodes) at once on a SerialEnv."""
    policy = _tiny_deflow(3, 2, sampling=sampling, num_samples=4)
    assert policy.noise_key is None
    runs = {n: evaluate(policy, _SeededGoalEnv, num_episodes=7, seed=5, progress=False, num_envs=n)
            for n in (1, 3, 8)}
    assert policy.noise_key is None  # the key lent for the evaluation is given back
    seq = runs[1]
    assert len(set(seq["lengths"])) > 1 and 0 < seq["success_rate"] < 1  # episodes differ: a real comparison
    assert len(set(seq["returns"])) == 7
    for n in (3, 8):
        assert runs[n]["successes"] == seq["successes"] and runs[n]["lengths"] == seq["lengths"]
        # equal to float32 round-off: a batched matmul sums in another order than a single row's
        torch.testing.assert_close(torch.tensor(runs[n]["returns"]), torch.tensor(seq["returns"]), atol=1e-5, rtol=0)
    exact = evaluate(policy, _SeededGoalEnv, num_episodes=7, seed=5, progress=False, num_envs=3, batch_invariant=True)
    assert exact == seq  # one policy call per env: bit for bit the sequential episodes
    other = evaluate(policy, _SeededGoalEnv, num_episodes=7, seed=6, progress=False)
    assert max(abs(a - b) for a, b in zip(other["returns"], seq["returns"])) > 0.1


def test_policy_without_noise_key_uses_the_global_rng():
    """A plain module: reproducible for a fixed batching, the caller's RNG untouched."""
    policy = TensorDictModule(lambda obs: torch.rand(*obs.shape[:-1], 2) * 2 - 1, ["observation"], ["action"])
    before = torch.get_rng_state()
    a = evaluate(policy, _SeededGoalEnv, num_episodes=4, seed=1, progress=False, num_envs=2)
    b = evaluate(policy, _SeededGoalEnv, num_episodes=4, seed=1, progress=False, num_envs=2)
    assert a == b and torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_batched_equals_sequential_on_ogbench():
    """cube-single through make_ogbench_env: sequential vs SerialEnv, a DeFlow actor with its noise key."""
    policy = _tiny_deflow(28, 5)
    policy.noise_key = "x0"  # an actor built with its own noise key keeps it
    seen = {}

    def record(module, args):  # the states each call saw, to compare trajectories and not only counts
        seen.setdefault(args[0].batch_dims, []).append(args[0]["observation"].reshape(-1, 28).clone())

    policy.register_forward_pre_hook(record)
    seq = evaluate(policy, CUBE, num_episodes=3, seed=0, progress=False, max_steps=12)
    bat = evaluate(policy, CUBE, num_episodes=3, seed=0, progress=False, max_steps=12, num_envs=2)
    exact = evaluate(policy, CUBE, num_episodes=3, seed=0, progress=False, max_steps=12, num_envs=2,
                     batch_invariant=True)
    assert seq == bat == exact and seq["lengths"] == [12, 12, 12]
    first_seq = torch.cat(seen[0][:12])  # episode 0, sequential
    first_bat = torch.cat([s[0:1] for s in seen[1][:12]])  # episode 0 ran in env slot 0
    assert (first_seq[1:] - first_seq[:-1]).abs().max() > 1e-3  # the arm moved
    torch.testing.assert_close(first_seq, first_bat, atol=1e-4, rtol=0)  # float32 round-off of batched matmuls


def test_batched_arguments():
    policy = _const(dim=2)
    with pytest.raises(ValueError, match="needs a batched env"):
        evaluate(policy, _SeededGoalEnv(), num_episodes=2, num_envs=2)
    with pytest.raises(ValueError, match="num_envs"):
        evaluate(policy, _SeededGoalEnv, num_episodes=2, num_envs=0)
    with pytest.raises(TypeError, match="env_or_name"):
        evaluate(policy, 3, num_episodes=2)
    from torchrl.envs import SerialEnv

    bare = SerialEnv(2, _SeededGoalEnv)
    with pytest.raises(ValueError, match="RewardSum"):
        evaluate(policy, bare, num_episodes=2)
    bare.close(raise_if_closed=False)


@pytest.mark.slow
def test_record_episode_writes_a_video(tmp_path):
    """Two steps of cube-single rendered (software EGL here) into a CSVLogger's videos folder."""
    from torchrl.record.loggers import CSVLogger

    from deflow_trl.envs.evaluation import record_episode

    policy = _tiny_deflow(28, 5)
    logger = CSVLogger(exp_name="metrics", log_dir=str(tmp_path))
    out = record_episode(policy, CUBE, logger, seed=0, episode=1, step=7, max_steps=2, size=32)
    assert out["length"] == 2 and out["frames"] == 3  # the reset frame and one per step
    videos = list((tmp_path / "metrics" / "videos").iterdir())
    assert [v.name for v in videos] == ["evaluation_7.pt"]
    frames = torch.load(videos[0])
    assert frames.shape == (1, 3, 3, 32, 32) and frames.dtype == torch.uint8 and frames.float().std() > 1
    replay = evaluate(policy, CUBE, num_episodes=2, seed=0, progress=False, max_steps=2)
    assert out["return"] == replay["returns"][1]


def test_video_falls_back_to_pt_when_torchcodec_is_installed_but_unloadable(tmp_path, monkeypatch, caplog):
    """A torchcodec whose native library does not load (the case on this project's CPU machines) must not
    crash the first evaluation with video: the CSVLogger is switched to .pt with one warning naming why."""
    import sys

    from torchrl.record.loggers import CSVLogger

    from deflow_trl.envs.evaluation import _mp4_or_pt, mp4_writer_error

    fake = tmp_path / "site" / "torchcodec"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "encoders.py").write_text("raise OSError('Could not load this library: libtorchcodec_core.so')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "torchcodec" or m.startswith("torchcodec.")]:
        monkeypatch.delitem(sys.modules, name)
    assert "OSError: Could not load this library" in mp4_writer_error()
    logger = CSVLogger(exp_name="metrics", log_dir=str(tmp_path), video_format="mp4")
    with caplog.at_level("WARNING"):
        _mp4_or_pt(logger)
    assert logger.experiment.video_format == "pt"
    assert "torchcodec cannot be imported (OSError" in caplog.text and ".pt" in caplog.text
    logger.experiment.video_format = "pt"  # a logger already set to .pt is left alone, without a warning
    caplog.clear()
    _mp4_or_pt(logger)
    assert logger.experiment.video_format == "pt" and not caplog.text


@pytest.mark.slow
def test_parallel_env_evaluation_equals_sequential():
    """eval_parallel=true (a ParallelEnv, one worker process per env) gives the sequential episodes exactly."""
    policy = _tiny_deflow(28, 5)
    seq = evaluate(policy, CUBE, num_episodes=3, seed=0, progress=False, max_steps=12)
    par = evaluate(policy, CUBE, num_episodes=3, seed=0, progress=False, max_steps=12, num_envs=2, parallel=True,
                   batch_invariant=True)
    assert par == seq and par["lengths"] == [12, 12, 12]
