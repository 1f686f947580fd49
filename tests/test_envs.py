"""OGBench single-task envs: TorchRL's GymEnv + transforms (and the deprecated OGBenchEnv)."""
import numpy as np
import pytest
import torch

from deflow_trl.envs import OGBenchEnv, make_ogbench_env, singletask_env_id

CUBE = "cube-single-play-singletask-task1-v0"


@pytest.fixture(scope="module")
def env():
    e = make_ogbench_env(CUBE, seed=0)
    yield e
    e.close()


def _zeros(env):
    return lambda td: td.set("action", torch.zeros(env.action_spec.shape))


def test_specs_and_keys(env):
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env)
    assert isinstance(env.base_env, GymEnv)
    assert env.env_id == "cube-single-singletask-task1-v0" and env.max_episode_steps == 200
    td = env.rollout(4, _zeros(env))
    assert td["observation"].dtype == torch.float32 and td["observation"].shape == (4, 28)
    assert td["next", "success"].shape == (4, 1) and td["next", "success"].dtype == torch.bool
    assert td["next", "reward"].eq(-1).all()  # cube-single task 1 unsolved: reward = successes - 1
    assert td["next", "step_count"].flatten().tolist() == [1, 2, 3, 4]
    assert td["next", "episode_reward"].flatten().tolist() == [-1.0, -2.0, -3.0, -4.0]


def test_time_limit_truncates_and_next_rollout_resets(env):
    td = env.rollout(500, _zeros(env))
    assert td.shape == (200,)
    assert td["next", "truncated"][-1].item() and not td["next", "terminated"].any()
    assert td["next", "done"].sum() == 1
    td2 = env.rollout(3, _zeros(env))  # a fresh episode, not a step past the end
    assert not td2["done"][0].item()
    assert (td2["observation"][0] - td["next", "observation"][-1]).abs().max() > 1e-3


def test_seeding_reproducible(env):
    env.set_seed(7)
    a = env.rollout(20, _zeros(env))["next", "observation"]
    env.set_seed(7)
    b = env.rollout(20, _zeros(env))["next", "observation"]
    c = env.rollout(20, _zeros(env))["next", "observation"]
    # Re-seeding a used env matches to round-off (MuJoCo/IK state leaves ~1e-13 differences at times).
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_global_numpy_rng_is_private():
    """Maze resets draw from np.random; the env keeps its own stream and leaves the caller's alone."""
    env = make_ogbench_env("pointmaze-medium-navigate-singletask-task1-v0", seed=3)
    obs = []
    for outside in (0, 12345):
        np.random.seed(outside)
        env.set_seed(3)
        obs.append(env.reset()["observation"])
        assert np.random.get_state()[1][:5].tolist() == np.random.RandomState(outside).get_state()[1][:5].tolist()
        assert np.random.get_state()[2] == np.random.RandomState(outside).get_state()[2]  # not advanced
    different = env.reset(seed=4)["observation"]
    env.close()
    assert torch.equal(obs[0], obs[1])
    assert (obs[0] - different).abs().max() > 1e-3


@pytest.mark.slow
def test_reset_takes_a_seed_and_batched_envs_one_per_worker():
    single = make_ogbench_env(CUBE)
    a = single.reset(seed=11)["observation"]
    b = single.reset(seed=12)["observation"]
    assert torch.equal(single.reset(seed=11)["observation"], a) and (a - b).abs().max() > 1e-3
    single.close()
    batched = make_ogbench_env(CUBE, num_envs=2, parallel=False)
    td = batched.reset(list_of_kwargs=[{"seed": 12}, {"seed": 11}])
    assert torch.equal(td["observation"][0], b) and torch.equal(td["observation"][1], a)
    batched.close()


def test_success_terminates_with_zero_reward():
    """Place the cube on task 1's goal: the env reports success, terminates, reward 0."""
    import mujoco

    env = make_ogbench_env("cube-single-singletask-task1-v0", seed=0)
    start = env.reset()
    u = env.base_env._env.unwrapped
    u._data.joint("object_joint_0").qpos[:3] = u._data.mocap_pos[0]
    mujoco.mj_forward(u._model, u._data)
    td = env.rollout(10, _zeros(env), auto_reset=False, tensordict=start)
    # success is measured before the action ('pre' timing): seen on the second step
    assert td.shape[0] <= 3
    assert td["next", "success"][-1].item() and td["next", "terminated"][-1].item()
    assert td["next", "reward"][-1].item() == 0.0
    env.close()


def test_collector():
    from torchrl.collectors import Collector

    env = make_ogbench_env(CUBE, seed=0)
    col = Collector(env, None, frames_per_batch=60, total_frames=120)
    batches = [b for b in col]
    col.shutdown()
    assert [b.shape[0] for b in batches] == [60, 60]
    assert batches[0]["next", "success"].shape == (60, 1)
    assert batches[0]["action"].abs().max() <= 1


def test_deprecated_ogbench_env_still_works():
    with pytest.warns(DeprecationWarning, match="make_ogbench_env"):
        old = OGBenchEnv(CUBE, seed=0)
    td = old.rollout(3, _zeros(old))
    assert td["next", "observation"].dtype == torch.float32 and td["next", "success"].shape == (3, 1)
    old.close()


def test_success_reader_reads_a_python_bool():
    from tensordict import TensorDict

    from deflow_trl.envs import SuccessReader

    reader = SuccessReader()
    assert reader(info_dict={"success": True}, tensordict=TensorDict())["success"].tolist() == [True]
    assert reader(info_dict={}, tensordict=TensorDict())["success"].tolist() == [False]
    assert reader.info_spec["success"].dtype == torch.bool


def test_unknown_env_lists_known():
    with pytest.raises(ValueError, match="cube-single-singletask-task1-v0"):
        make_ogbench_env("cube-single-v0")  # goal-conditioned: not a single-task env
    with pytest.raises(ValueError, match="Unknown"):
        singletask_env_id("nope-singletask-v0")
    with pytest.raises(ValueError, match="num_envs"):
        make_ogbench_env(CUBE, num_envs=0)
