"""Pixel suites (visual-cube/-scene/-puzzle): encoder, frame stacking, augmentation, data, env, configs.

Fast tests use tiny fake frames made here; the two rendering tests (MuJoCo EGL, ≈ 0.3-1 s per
frame on CPU) are marked slow.
"""
import math
import os

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch.nn import functional as F

from deflow_trl.data.pixels import (
    FrameStackSampler,
    RandomCrop,
    load_visual_dataset,
    make_pixel_replay_buffer,
    pixel_replay_buffer_from_rows,
    random_crop,
)
from deflow_trl.encoders import ImpalaEncoder, make_encoder, same_pool_padding
from deflow_trl.errors import DatasetError

VISUAL = "visual-cube-single-play-v0"
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "deflow_trl", "configs")


# ----------------------------------------------------------------------------- helpers
def _rows(lengths, hw=(8, 8), act_dim=2):
    """Frame rows of trajectories with the given frame counts; every pixel of row i holds the value i."""
    n = sum(lengths)
    ends = torch.zeros(n, dtype=torch.bool)
    ends[torch.tensor(lengths).cumsum(0) - 1] = True
    return TensorDict(
        {
            "pixels": torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, *hw, 3).clone(),
            "trajectory_end": ends,
            "action": torch.arange(n, dtype=torch.float32)[:, None].expand(n, act_dim).clone(),
            "next": {
                "reward": -torch.arange(n, dtype=torch.float32)[:, None],
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "done": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def _write_visual(directory, frames, terminals, stem=VISUAL, **extra):
    os.makedirs(directory, exist_ok=True)
    n = len(terminals)
    arrays = dict(observations=frames, actions=np.zeros((n, 5), np.float32), terminals=np.asarray(terminals, bool))
    arrays.update(extra)
    for suffix in (".npz", "-val.npz"):
        np.savez(os.path.join(directory, stem + suffix), **arrays)
    return os.path.join(directory, stem + ".npz")


def _coordinate_images(b, h=8, w=8, shift=0):
    """[B, H, W, 3] uint8 whose channel 0 encodes (row, col) uniquely, channel 1 the sample."""
    img = torch.zeros(b, h, w, 3, dtype=torch.uint8)
    img[..., 0] = (torch.arange(h)[:, None] * w + torch.arange(w)[None, :] + shift).to(torch.uint8)
    img[..., 1] = torch.arange(b, dtype=torch.uint8)[:, None, None]
    return img


# ----------------------------------------------------------------------------- encoder
def test_encoder_output_shapes():
    enc = make_encoder("impala_small", in_channels=9)
    assert enc.out_features == 512 and enc.feature_map_shape == (8, 8, 32)  # 64 -> 32 -> 16 -> 8 ('SAME' pooling)
    x = torch.randint(0, 256, (2, 3, 64, 64, 9), dtype=torch.uint8)
    out = enc(x)
    assert out.shape == (2, 3, 512) and out.dtype == torch.float32
    assert torch.allclose(enc(x.float()), out, atol=1e-6)  # float input on the 0..255 scale: same features
    assert (out >= -0.2).all()  # GELU on the final layer (min of tanh-GELU ≈ -0.17)
    assert enc(x[0, 0]).shape == (512,)  # unbatched
    assert make_encoder("impala_small", in_channels=3, image_size=(32, 48)).feature_map_shape == (4, 6, 32)


def test_encoder_init_xavier_bounds_and_zero_bias():
    torch.manual_seed(0)
    enc = make_encoder("impala_small", in_channels=9)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 9 and len(linears) == 1  # 3 stacks × (conv + 1 block of 2 convs); one 512 head
    for m in convs + linears:
        fan_in, fan_out = m.weight.shape[1], m.weight.shape[0]
        if m.weight.ndim == 4:
            fan_in, fan_out = fan_in * 9, fan_out * 9  # 3×3 receptive field, as Flax's xavier_uniform
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = m.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert abs(w.var().item() - bound**2 / 3) < 0.25 * bound**2 / 3  # uniform(-b, b) variance
        assert torch.count_nonzero(m.bias) == 0
    assert linears[0].in_features == 8 * 8 * 32 and linears[0].out_features == 512


def test_encoder_scales_input_by_255():
    enc = ImpalaEncoder(in_channels=6)
    seen = {}
    enc.stacks[0].conv.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = torch.randint(0, 256, (3, 64, 64, 6), dtype=torch.uint8)
    enc(x)
    expected = x.permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(seen["x"], expected) and seen["x"].max() <= 1.0


def test_max_pool_is_flax_same():
    assert same_pool_padding(64) == (0, 1) and same_pool_padding(32) == (0, 1) and same_pool_padding(33) == (1, 1)
    from deflow_trl.encoders import _max_pool_same

    for size in (6, 7):
        x = torch.randn(1, 1, size, size)
        lo = same_pool_padding(size)[0]
        ref = torch.full((1, 1, -(-size // 2), -(-size // 2)), float("nan"))
        for i in range(ref.shape[2]):
            for j in range(ref.shape[3]):
                r0, c0 = 2 * i - lo, 2 * j - lo  # window starts at -pad_low, as XLA's SAME
                ref[0, 0, i, j] = x[0, 0, max(r0, 0):r0 + 3, max(c0, 0):c0 + 3].max()
        assert torch.equal(_max_pool_same(x), ref)


def test_encoder_bad_input():
    enc = make_encoder("impala_small", in_channels=9)
    with pytest.raises(ValueError, match=r"expects observations \[\*B, 64, 64, 9\].*\(2, 32, 32, 9\)"):
        enc(torch.zeros(2, 32, 32, 9, dtype=torch.uint8))  # frame of the wrong size
    with pytest.raises(TypeError, match="uint8"):
        enc(torch.zeros(2, 64, 64, 9, dtype=torch.int32))  # wrong dtype
    with pytest.raises(ValueError, match="frame stack of the data/env does not match"):
        enc(torch.zeros(2, 64, 64, 6, dtype=torch.uint8))  # 2 stacked frames for an encoder built for 3
    with pytest.raises(ValueError, match="channels-first"):
        enc(torch.zeros(2, 9, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
        make_encoder("resnet", in_channels=9)


# ----------------------------------------------------------------------------- frame stacking
def _reference_stack(t, lengths, s=3):
    """The reference's rule (FQL datasets.py), written independently: frames before the episode start -> its first."""
    start = 0
    for length in lengths:
        if start <= t < start + length:
            break
        start += length
    obs = [max(t - i, start) for i in reversed(range(s))]
    return obs, obs[1:] + [t + 1]


def test_frame_stacking_at_episode_starts():
    lengths = [5, 4, 6]  # frames per trajectory; the last frame of each has no transition
    rb = pixel_replay_buffer_from_rows(_rows(lengths), batch_size=64, augment_prob=0.0,
                                       generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(10):
        b = rb.sample()
        t = b["index"][:, 2]  # rows [t-2, t-1, t, t+1] (clamped at the start): column 2 is frame t
        for k in range(len(t)):
            obs, nxt = _reference_stack(int(t[k]), lengths)
            assert b["observation"][k, 0, 0, ::3].tolist() == obs  # one value per stacked frame (all 3 channels alike)
            assert b["next", "observation"][k, 0, 0, ::3].tolist() == nxt
            assert b["action"][k, 0].item() == t[k] and b["next", "reward"][k, 0].item() == -t[k]
        seen |= set(t.tolist())
    assert seen == {0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13}  # every transition, never a trajectory's last frame
    # The episode starts exactly: t = 5 (second episode's first frame) and t = 6.
    assert _reference_stack(5, lengths) == ([5, 5, 5], [5, 5, 6])
    assert _reference_stack(6, lengths) == ([5, 5, 6], [5, 6, 7])
    b = rb.sample()
    assert b["observation"].shape == (64, 8, 8, 9) and b["observation"].dtype == torch.uint8


def test_frame_stack_bad_input():
    with pytest.raises(ValueError, match="frame_stack must be an integer >= 1"):
        FrameStackSampler(torch.tensor([0, 0, 1], dtype=torch.bool), frame_stack=0)
    with pytest.raises(DatasetError, match="last row"):
        FrameStackSampler(torch.tensor([0, 1, 0], dtype=torch.bool))
    rb = pixel_replay_buffer_from_rows(_rows([5, 4]), batch_size=4, frame_stack=2, augment_prob=0.0)
    obs = rb.sample()["observation"]
    assert obs.shape[-1] == 6
    with pytest.raises(ValueError, match="frame stack of the data/env does not match"):
        make_encoder("impala_small", in_channels=9, image_size=(8, 8))(obs)  # config says 3, data stacked 2


# ----------------------------------------------------------------------------- augmentation
def test_random_crop_is_edge_pad_then_crop():
    x = torch.rand(5, 8, 8, 3)
    offsets = torch.randint(0, 7, (5, 2))
    padded = F.pad(x.permute(0, 3, 1, 2), (3, 3, 3, 3), mode="replicate").permute(0, 2, 3, 1)
    ref = torch.stack([padded[i, r:r + 8, c:c + 8] for i, (r, c) in enumerate(offsets.tolist())])
    assert torch.equal(random_crop(x, offsets, 3), ref)
    assert torch.equal(random_crop(x, torch.full((5, 2), 3), 3), x)  # offset = padding: identity


def _find_offset(cropped, original):
    hits = [(r, c) for r in range(7) for c in range(7)
            if torch.equal(random_crop(original[None], torch.tensor([[r, c]]), 3)[0], cropped)]
    assert len(hits) == 1
    return hits[0]


def test_augmentation_shares_offsets_between_observation_and_next():
    b = 16
    td = TensorDict({"observation": _coordinate_images(b), "next": {"observation": _coordinate_images(b, shift=100)}},
                    batch_size=[b])
    aug = RandomCrop(padding=3, prob=1.0, generator=torch.Generator().manual_seed(1))
    out = aug(td.clone())
    offsets = []
    for k in range(b):
        o = _find_offset(out["observation"][k], td["observation"][k])
        assert _find_offset(out["next", "observation"][k], td["next", "observation"][k]) == o
        offsets.append(o)
    assert len(set(offsets)) > 6  # per-sample offsets, not one per batch (≈ 14 distinct expected)


def test_augmentation_probability_per_batch():
    """P(batch augmented) = prob: 1500 batches each, tolerance 0.05 (≥ 3.9 standard errors: 0.013 at p = 0.5)."""
    g = torch.Generator().manual_seed(0)
    images = _coordinate_images(4)
    td = TensorDict({"observation": images, "next": {"observation": images}}, [4])
    for prob in (0.5, 0.2):
        aug = RandomCrop(padding=3, prob=prob, generator=g)
        changed = []
        for i in range(1500):
            td.set("observation", images)
            out = aug(td)["observation"]
            changed.append(out is not images)  # replaced only when the batch is augmented
            if i < 100 and changed[-1]:  # all of the batch (a sample stays put only at the identity offset, p = 1/49)
                assert (out != images).flatten(1).any(1).sum() >= 2
        assert abs(np.mean(changed) - prob) < 0.05
    td.set("observation", images)
    assert RandomCrop(prob=0.0)(td)["observation"] is images
    assert RandomCrop(prob=1.0)(td)["observation"] is not images
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        RandomCrop(prob=1.5)


def test_buffer_crops_observation_and_next_alike():
    """In the buffer (crop of the S+1 frames, then stacking): frames t-1, t of the observation and of the
    next observation are the same crops, and differ from the uncropped frames for most samples."""
    rows = _rows([6, 6], hw=(16, 16))
    rows["pixels"] = torch.randint(0, 256, rows["pixels"].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rb = pixel_replay_buffer_from_rows(rows, batch_size=128, augment_prob=1.0, device="cpu",
                                       generator=torch.Generator().manual_seed(0))
    b = rb.sample()
    assert b["observation"].device.type == "cpu" and b["observation"].shape == (128, 16, 16, 9)
    assert torch.equal(b["observation"][..., 3:], b["next", "observation"][..., :6])  # shared offsets
    plain = rows["pixels"][b["index"][:, 2]]  # frame t, uncropped
    moved = (b["observation"][..., 6:] != plain).flatten(1).any(1)
    assert moved.float().mean() > 0.9  # identity offset only with p = 1/49


# ----------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("storage", ["ram", "memmap"])
def test_uint8_dataset_round_trips_through_the_buffer(tmp_path, storage):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (13, 64, 64, 3), dtype=np.uint8)
    terminals = np.zeros(13, bool)
    terminals[[6, 12]] = True
    _write_visual(str(tmp_path), frames, terminals)
    rb = make_pixel_replay_buffer(VISUAL, batch_size=16, dataset_dir=str(tmp_path), storage=storage,
                                  scratch_dir=str(tmp_path / "mm"), chunk_frames=5, augment_prob=0.0)
    stored = rb.storage[:]["pixels"]
    assert stored.dtype == torch.uint8 and torch.equal(stored, torch.from_numpy(frames))
    b = rb.sample()
    idx = b["index"]  # [B, 4] frame rows
    want = torch.from_numpy(frames)[idx[:, :3]].permute(0, 2, 3, 1, 4).reshape(16, 64, 64, 9)
    assert torch.equal(b["observation"], want)
    assert torch.equal(b["next", "observation"][..., -3:], torch.from_numpy(frames)[idx[:, 3]])
    assert not b["next", "terminated"].any() and "reward" not in b["next"].keys()  # goal-conditioned name
    assert torch.equal(b["next", "truncated"][:, 0], torch.from_numpy(terminals)[idx[:, 3]])
    td = load_visual_dataset(VISUAL, dataset_dir=str(tmp_path))
    assert torch.equal(td["pixels"], torch.from_numpy(frames)) and td["trajectory_end"].sum() == 2


def test_visual_dataset_bad_input(tmp_path):
    t = np.array([0, 0, 1, 0, 1], bool)
    _write_visual(str(tmp_path / "a"), np.zeros((5, 32, 32, 3), np.uint8), t)
    with pytest.raises(DatasetError, match=r"visual OGBench frames are \[N, 64, 64, 3\]"):
        make_pixel_replay_buffer(VISUAL, 4, dataset_dir=str(tmp_path / "a"))  # frames of the wrong size
    _write_visual(str(tmp_path / "b"), np.zeros((5, 64, 64, 3), np.float32), t)
    with pytest.raises(DatasetError, match="dtype float32; visual OGBench frames are uint8"):
        make_pixel_replay_buffer(VISUAL, 4, dataset_dir=str(tmp_path / "b"))  # frames of the wrong dtype
    _write_visual(str(tmp_path / "c"), np.zeros((5, 28), np.float32), t)
    with pytest.raises(DatasetError, match="state vectors, not frames"):
        make_pixel_replay_buffer(VISUAL, 4, dataset_dir=str(tmp_path / "c"))  # a state file under a visual name
    with pytest.raises(ValueError, match="state-based OGBench name, not a visual one"):
        make_pixel_replay_buffer("cube-single-play-v0", 4, dataset_dir=str(tmp_path / "c"))
    from deflow_trl.data import load_ogbench_dataset

    with pytest.raises(ValueError, match="pixel-based \\(visual\\) OGBench name.*make_pixel_replay_buffer"):
        load_ogbench_dataset(VISUAL, dataset_dir=str(tmp_path / "a"))  # a visual dataset loaded as a state one
    with pytest.raises(FileNotFoundError, match="python -m deflow_trl.data.generate --env visual-cube-single-play-v0"):
        make_pixel_replay_buffer(VISUAL, 4, dataset_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="frame_stack must be an integer >= 1"):
        make_pixel_replay_buffer(VISUAL, 4, dataset_dir=str(tmp_path / "a"), frame_stack=0)


@pytest.mark.slow
def test_singletask_rewards_match_the_state_loader(tiny_ogbench_dir, tmp_path):
    """Rewards/terminals of a visual single-task set = OGBench's relabelling of the same states (state loader)."""
    from deflow_trl.data import load_ogbench_dataset

    with np.load(os.path.join(tiny_ogbench_dir, "cube-single-play-v0.npz")) as f:
        src = {k: f[k] for k in f}
    n = len(src["terminals"])
    frames = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    _write_visual(str(tmp_path), frames, src["terminals"], qpos=src["qpos"], qvel=src["qvel"], actions=src["actions"])
    rows = load_visual_dataset("visual-cube-single-play-singletask-task1-v0", dataset_dir=str(tmp_path))
    state = load_ogbench_dataset("cube-single-play-singletask-task1-v0", dataset_dir=tiny_ogbench_dir)
    keep = ~rows["trajectory_end"]  # transition rows, in order, = the state loader's transitions
    for key in (("next", "reward"), ("next", "terminated"), ("next", "truncated"), ("next", "done"), "action"):
        assert torch.equal(rows[key][keep], state[key]), key
    assert set(torch.unique(rows["next", "reward"][keep]).tolist()) <= {-1.0, 0.0}


# ----------------------------------------------------------------------------- envs
class _FakeVisual:
    """A gymnasium-like visual env without MuJoCo: frame value = 10 + step, success at step 3."""

    def __init__(self, shape=(64, 64, 3), dtype=np.uint8):
        import gymnasium

        self.action_space = gymnasium.spaces.Box(-1, 1, (5,), np.float32)
        self.shape, self.dtype, self.t = shape, dtype, 0

    def _frame(self):
        return np.full(self.shape, 10 + self.t, self.dtype)

    def reset(self, seed=None, options=None):
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), float(self.t >= 3) - 1.0, self.t >= 3, False, {"success": self.t >= 3}

    def close(self):
        pass


def test_pixel_env_stacks_frames_like_training():
    """Fake renderer (no EGL needed): the policy sees [64, 64, 9] uint8, first frame repeated at reset."""
    from tensordict.nn import TensorDictModule

    from deflow_trl.envs.evaluation import evaluate
    from deflow_trl.envs.pixels import make_pixel_env

    env = make_pixel_env("visual-cube-single-play-singletask-task1-v0", seed=0, gym_env=_FakeVisual(),
                         max_episode_steps=10)
    assert env.observation_spec["observation"].shape == (64, 64, 9)
    assert env.observation_spec["observation"].dtype == torch.uint8
    td = env.rollout(5, break_when_any_done=False)  # episode of 3 steps, then an automatic reset
    obs = td["observation"][:, 0, 0, ::3].tolist()  # one value per stacked frame, oldest first
    assert obs == [[10, 10, 10], [10, 10, 11], [10, 11, 12], [10, 10, 10], [10, 10, 11]]
    assert td["next", "observation"][:, 0, 0, ::3].tolist()[:3] == [[10, 10, 11], [10, 11, 12], [11, 12, 13]]
    assert td["observation"].dtype == torch.uint8 and td["observation"].shape == (5, 64, 64, 9)
    seen = []
    policy = TensorDictModule(lambda o: (seen.append(o.shape), torch.zeros(*o.shape[:-3], 5))[1],
                              ["observation"], ["action"])
    out = evaluate(policy, env, num_episodes=2, progress=False)
    assert out["success_rate"] == 1.0 and out["lengths"] == [3, 3] and seen[0] == (64, 64, 9)


def test_pixel_env_bad_input():
    from deflow_trl.envs.pixels import make_pixel_env

    name = "visual-cube-single-play-singletask-task1-v0"
    with pytest.raises(ValueError, match=r"rendered frame has shape \(32, 32, 3\)"):
        make_pixel_env(name, gym_env=_FakeVisual(shape=(32, 32, 3))).reset()  # wrong size
    with pytest.raises(ValueError, match="dtype float32"):
        make_pixel_env(name, gym_env=_FakeVisual(dtype=np.float32)).reset()  # wrong dtype
    with pytest.raises(ValueError, match="frame_stack must be an integer >= 1"):
        make_pixel_env(name, frame_stack=0, gym_env=_FakeVisual())
    with pytest.raises(ValueError, match="state-based name"):
        make_pixel_env("cube-single-singletask-task1-v0", gym_env=_FakeVisual())
    from deflow_trl.envs import make_ogbench_env

    with pytest.raises(ValueError, match="pixel-based"):
        make_ogbench_env(name)  # the state env refuses a visual name before building anything


@pytest.mark.slow
def test_visual_env_renders_with_egl():
    """The real visual-cube-single env (MuJoCo EGL): 2 steps, [64, 64, 9] uint8 frames with content."""
    from deflow_trl.envs.pixels import make_pixel_env

    env = make_pixel_env("visual-cube-single-play-singletask-task1-v0", seed=0)
    td = env.rollout(2)
    obs = td["next", "observation"]
    assert obs.shape == (2, 64, 64, 9) and obs.dtype == torch.uint8
    assert obs.float().std() > 10  # a rendered scene, not a blank frame
    assert torch.equal(td["observation"][0, ..., :3], td["observation"][0, ..., 6:])  # reset: first frame repeated
    env.close()


@pytest.mark.slow
def test_generate_visual_dataset_renders_uint8_frames(tmp_path):
    """generate.py's pixel path: uint8 frames in OGBench's layout, loadable by the pixel buffer."""
    from deflow_trl.data.generate import generate_dataset

    train, _ = generate_dataset(VISUAL, 1, episode_length=3, val_episodes=1, dataset_dir=str(tmp_path),
                                progress=False)
    with np.load(train) as f:
        assert f["observations"].shape == (3, 64, 64, 3) and f["observations"].dtype == np.uint8
        assert f["observations"].std() > 10 and f["terminals"].tolist() == [0, 0, 1]
    rb = make_pixel_replay_buffer(VISUAL, batch_size=4, dataset_dir=str(tmp_path))
    assert rb.sample()["observation"].shape == (4, 64, 64, 9)


# ----------------------------------------------------------------------------- configs and names
@pytest.mark.parametrize("suite,delta,fql_alpha", [
    ("visual_cube_single", 1e-3, 300), ("visual_cube_double", 1e-3, 100), ("visual_scene", 1e-3, 100),
    ("visual_puzzle_3x3", 5e-4, 300), ("visual_puzzle_4x4", 5e-4, 300),
])
def test_visual_configs(suite, delta, fql_alpha):
    from hydra import compose, initialize_config_dir

    from deflow_trl.envs.names import parse_ogbench_name

    with initialize_config_dir(config_dir=os.path.abspath(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[f"env={suite}", "+experiment=visual"])
    assert (cfg.env.target_divergence, cfg.env.discount, cfg.env.q_agg, cfg.task) == (delta, 0.99, "mean", 1)
    assert cfg.agent.target_divergence == delta and cfg.env.fql_alpha == fql_alpha  # docs/design.md §3
    assert (cfg.env.pixels, cfg.env.frame_stack, cfg.env.encoder) == (True, 3, "impala_small")
    assert (cfg.env.augment_prob, cfg.env.crop_padding) == (0.5, 3)
    assert (cfg.offline_steps, cfg.eval_interval, cfg.eval_episodes) == (500_000, 100_000, 50)
    name = parse_ogbench_name(cfg.dataset, pixels=True)
    assert name.pixels and name.singletask and name.env_id.startswith("visual-")


def test_generate_command_names_visual_datasets():
    from deflow_trl.data.generate import generate_command
    from deflow_trl.envs.names import parse_ogbench_name, suite_of

    assert generate_command("visual-scene-play-v0").startswith("python -m deflow_trl.data.generate --env visual-scene")
    assert suite_of("visual-puzzle-4x4-v0") == "puzzle"
    assert parse_ogbench_name("visual-cube-double-play-singletask-task3-v0", pixels=True).state_env_id == \
        "cube-double-singletask-task3-v0"
    with pytest.raises(ValueError, match="not a suite handled here"):
        parse_ogbench_name("visual-antmaze-large-navigate-v0", pixels=True)
