"""evaluate(): OGBench's success definition, numbers, reproducibility."""
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from deflow_trl.evaluation import evaluate

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
    (o1, s1), (o2, s2), (o3, s3) = run(0), run(0), run(1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert o1 == o2 and torch.equal(s1, s2)
    assert (s1 - s3).abs().max() > 1e-3


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_episodes"):
        evaluate(_const(), CUBE, num_episodes=0)
    with pytest.raises(ValueError, match="Unknown OGBench single-task env"):
        evaluate(_const(), "cube-single-v0", num_episodes=1)
