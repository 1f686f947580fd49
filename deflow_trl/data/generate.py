"""Regenerate OGBench datasets locally, in the official ``.npz`` format.

No machine of this project reaches the internet, so the official files cannot be
downloaded. OGBench ships the MuJoCo environments *and* the scripted oracles that
produced its manipulation "play" data (``ogbench/manipspace/oracles/plan``); for
pointmaze "navigate" data the expert is the oracle subgoal direction itself. This
module reruns that recipe:

- manipulation (cube-*, scene, puzzle-*), ``play``: the plan oracle of the current
  sub-task, play noise 0.1, noise smoothing 0.5, a new random sub-task whenever the
  oracle finishes, ``mode='data_collection'``, no termination at the goal; scene
  episodes whose cube leaves the visible area are redrawn (OGBench's health check);
- pointmaze-*, ``navigate``: action = direction to the BFS subgoal + N(0, 0.2²)
  noise, clipped; a new goal cell is drawn whenever the current one is reached.

Episodes have 1001 steps by default (OGBench's ``max_episode_steps``; the loader
turns each into 1000 transitions). ``--episodes N`` training episodes go to
``<name>.npz`` and ``max(1, N // 10)`` more go to ``<name>-val.npz``, with OGBench's
keys and dtypes: ``observations`` float32 (``visual-*``: uint8 frames [N, 64, 64, 3], rendered with
EGL at ≈ 0.3-0.6 s per frame on a CPU, so only tiny visual sets here), ``actions`` float32, ``terminals`` bool,
``qpos``/``qvel`` float32 (the state *before* each action, which single-task
relabelling reads) and ``button_states`` int64 where the env has buttons.

Episode ``i`` is seeded from ``(seed, i)`` alone, so a file does not depend on the
number of workers. Files are written to a temporary name in the target directory
and renamed into place, so an interrupted run never leaves a ``<name>.npz`` the
loader would accept.

Command line (defaults write where the loader and ogbench read, ``~/.ogbench/data``)::

    python -m deflow_trl.data.generate --env cube-single-play-v0 --episodes 1000 --workers 2
    python -m deflow_trl.data.generate --env puzzle-3x3-play-v0 --episodes 3 \
        --episode-length 50 --dataset-dir /tmp/og --seed 0

Examples:
    >>> import tempfile
    >>> from deflow_trl.data.generate import generate_dataset
    >>> d = tempfile.mkdtemp()
    >>> train, val = generate_dataset("cube-single-play-v0", num_episodes=2, episode_length=20,
    ...                               dataset_dir=d, progress=False)
    >>> import numpy as np; np.load(train)["observations"].shape
    (40, 28)
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m deflow_trl.data.generate` without the app extra: one line, not a traceback
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.data.generate")

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from deflow_trl.console import ensure_headless_gl, quiet_app
from deflow_trl.envs.names import VISUAL_PREFIX, parse_ogbench_name, suite_of
from deflow_trl.errors import debug_requested, one_line
from deflow_trl.filelock import FileLock
from deflow_trl.paths import check_writable, default_dataset_dir

__all__ = ["generate_dataset", "atomic_savez", "GENERATABLE", "default_dataset_dir", "generate_command"]

# (family, dataset type) pairs this module can regenerate.
GENERATABLE = {("cube", "play"), ("scene", "play"), ("puzzle", "play"), ("pointmaze", "navigate")}

_PLAY_NOISE = 0.1  # OGBench generate_manipspace.py: --noise
_PLAY_SMOOTHING = 0.5  # OGBench generate_manipspace.py: --noise_smoothing
_NAVIGATE_NOISE = 0.2  # OGBench generate_locomaze.py: --noise


def generate_command(file_stem: str, dataset_dir: str | None = None) -> str | None:
    """The exact command that regenerates ``file_stem``, or None if this module cannot."""
    name = parse_ogbench_name(file_stem, pixels=None)
    if (name.suite, name.dataset_type) not in GENERATABLE:
        return None
    cmd = f"python -m deflow_trl.data.generate --env {name.file_stem} --episodes 1000 --workers {os.cpu_count() or 1}"
    if dataset_dir is not None and os.path.abspath(os.path.expanduser(dataset_dir)) != default_dataset_dir():
        cmd += f" --dataset-dir {dataset_dir}"
    return cmd


def atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to ``path`` via a hidden temp file + ``os.replace`` (same directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # A file object, not a name: np.savez would append ".npz" to a name.
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- workers
# One env (and its oracles) per process, built once by the pool initializer.
_STATE: dict[str, Any] = {}


def _episode_seed(seed: int, index: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0] % (2**31 - 1))


def _init_worker(spec: dict) -> None:
    import gymnasium
    import ogbench  # noqa: F401  (registers the envs)

    _STATE.clear()
    _STATE["spec"] = spec
    if spec["suite"] == "pointmaze":
        env = gymnasium.make(spec["env_id"], terminate_at_goal=False, max_episode_steps=spec["episode_length"])
        maze = env.unwrapped.maze_map
        free = [(i, j) for i in range(maze.shape[0]) for j in range(maze.shape[1]) if maze[i, j] == 0]

        def is_hallway(i, j):
            vertical = maze[i - 1, j] == 0 and maze[i + 1, j] == 0 and maze[i, j - 1] == 1 and maze[i, j + 1] == 1
            horizontal = maze[i, j - 1] == 0 and maze[i, j + 1] == 0 and maze[i - 1, j] == 1 and maze[i + 1, j] == 1
            return vertical or horizontal

        _STATE["free_cells"] = free
        _STATE["goal_cells"] = [c for c in free if not is_hallway(*c)]  # goals only at junctions/corners
    else:
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        env = gymnasium.make(
            spec["env_id"], terminate_at_goal=False, mode="data_collection", max_episode_steps=spec["episode_length"]
        )
        kw = dict(env=env, noise=spec["noise"], noise_smoothing=spec["noise_smoothing"])
        if spec["suite"] == "cube":
            oracles = {"cube": CubePlanOracle(**kw)}
        elif spec["suite"] == "scene":
            oracles = {
                "cube": CubePlanOracle(**kw),
                "button": ButtonPlanOracle(**kw),
                "drawer": DrawerPlanOracle(**kw),
                "window": WindowPlanOracle(**kw),
            }
        else:  # puzzle: the gripper stays closed to press buttons
            oracles = {"button": ButtonPlanOracle(**kw, gripper_always_closed=True)}
        _STATE["oracles"] = oracles
    _STATE["env"] = env


def _stack_episode(rows: dict[str, list], has_buttons: bool) -> dict[str, np.ndarray]:
    out = {
        "observations": np.asarray(rows["observations"], dtype=np.uint8 if _STATE["spec"].get("pixels") else np.float32),
        "actions": np.asarray(rows["actions"], dtype=np.float32),
        "terminals": np.zeros(len(rows["actions"]), dtype=bool),
        "qpos": np.asarray(rows["qpos"], dtype=np.float32),
        "qvel": np.asarray(rows["qvel"], dtype=np.float32),
    }
    out["terminals"][-1] = True  # the trajectory ends here (a truncation, never a task terminal)
    if has_buttons:
        out["button_states"] = np.asarray(rows["button_states"], dtype=np.int64)
    return out


def _manip_episode(ep_seed: int) -> dict[str, np.ndarray]:
    spec, env, oracles = _STATE["spec"], _STATE["env"], _STATE["oracles"]
    # The oracles draw from numpy's global RNG, the env from its own: seed both per episode.
    np.random.seed(ep_seed)
    ob, info = env.reset(seed=ep_seed)
    p_stack = {"single": 0.0, "double": (0.0, 0.25), "triple": (0.05, 0.35), "quadruple": (0.1, 0.5),
               "octuple": (0.0, 0.35)}
    kind = spec["env_id"].split("-")[-2] if spec["suite"] == "cube" else None  # (visual-)cube-<kind>-v0
    ps = p_stack.get(kind, 0.5)
    ps = float(np.random.uniform(*ps)) if isinstance(ps, tuple) else ps
    has_buttons = hasattr(env.unwrapped, "_cur_button_states")
    oracle = oracles[info["privileged/target_task"]]
    oracle.reset(ob, info)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "qpos", "qvel", "button_states")}
    for _ in range(spec["episode_length"]):
        action = np.clip(np.asarray(oracle.select_action(ob, info)), -1, 1)
        next_ob, _, _, _, info = env.step(action)
        if oracle.done:  # sub-task finished: draw the next one, as OGBench's play data does
            new_ob, new_info = env.unwrapped.set_new_target(p_stack=ps)
            oracle = oracles[new_info["privileged/target_task"]]
            oracle.reset(new_ob, new_info)
        rows["observations"].append(ob)
        rows["actions"].append(action)
        rows["qpos"].append(info["prev_qpos"])
        rows["qvel"].append(info["prev_qvel"])
        _count_frame()
        if has_buttons:
            rows["button_states"].append(info["prev_button_states"])
        ob = next_ob
    return _stack_episode(rows, has_buttons)


def _count_frame() -> None:
    """Visual datasets count progress in rendered frames (an episode takes minutes): bump the shared counter."""
    counter = _STATE["spec"].get("frame_counter")
    if counter is not None:
        with counter.get_lock():
            counter.value += 1
        if "on_frame" in _STATE:  # single process: refresh the bar directly
            _STATE["on_frame"]()


def _scene_is_healthy(qpos: np.ndarray) -> bool:
    # OGBench's check: the cube stays in view unless it sits in the drawer.
    xyz = qpos[:, 14:17]
    too_right = (xyz[:, 1] >= 0.29).any()
    too_left = ((xyz[:, 1] <= -0.3) & ((xyz[:, 2] < 0.06) | (xyz[:, 2] > 0.08))).any()
    return not (too_right or too_left)


def _navigate_episode(ep_seed: int) -> dict[str, np.ndarray]:
    spec, env = _STATE["spec"], _STATE["env"]
    free, goals = _STATE["free_cells"], _STATE["goal_cells"]
    rng = np.random.default_rng(ep_seed)
    np.random.seed(ep_seed)  # maze.add_noise uses the global RNG
    env.action_space.seed(ep_seed)  # reset takes a few random "settling" steps from the action space
    task = dict(init_ij=free[rng.integers(len(free))], goal_ij=goals[rng.integers(len(goals))])
    ob, _ = env.reset(seed=ep_seed, options=dict(task_info=task))
    u = env.unwrapped
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "qpos", "qvel")}
    for _ in range(spec["episode_length"]):
        subgoal_xy, _ = u.get_oracle_subgoal(u.get_xy(), u.cur_goal_xy)
        direction = subgoal_xy - u.get_xy()
        direction = direction / (np.linalg.norm(direction) + 1e-6)
        action = np.clip(direction + rng.normal(0.0, spec["noise"], size=2), -1, 1)
        next_ob, _, _, _, info = env.step(action)
        if info["success"]:
            u.set_goal(goals[rng.integers(len(goals))])
        rows["observations"].append(ob)
        rows["actions"].append(action)
        rows["qpos"].append(info["prev_qpos"])
        rows["qvel"].append(info["prev_qvel"])
        ob = next_ob
    return _stack_episode(rows, has_buttons=False)


def _run_episode(index: int) -> tuple[int, dict[str, np.ndarray]]:
    spec = _STATE["spec"]
    for attempt in range(100):
        ep_seed = _episode_seed(spec["seed"], index, attempt)
        if spec["suite"] == "pointmaze":
            return index, _navigate_episode(ep_seed)
        ep = _manip_episode(ep_seed)
        if spec["suite"] != "scene" or _scene_is_healthy(ep["qpos"]):
            return index, ep
    raise RuntimeError(f"episode {index}: no healthy scene episode in 100 attempts")


# ----------------------------------------------------------------------------- driver
def _resolve(env: str) -> tuple[str, str]:
    """Accept a dataset name (``cube-single-play-v0``) or an env id (``cube-single-v0``)."""
    splits = env.split("-")
    if "singletask" in splits:  # checked first: guessing a dataset type would garble the name
        try:
            stem = parse_ogbench_name(env, pixels=None).file_stem
        except ValueError:
            stem = "-".join(splits[: splits.index("singletask")] + [splits[-1]])
        raise ValueError(
            f"{env!r} is a single-task name; generate its base dataset instead: --env {stem} "
            "(single-task rewards are computed at load time)."
        )
    if len(splits) >= 3 and splits[-2] in ("play", "noisy", "navigate", "stitch", "explore"):
        name = parse_ogbench_name(env, pixels=None)
    else:
        guess = "navigate" if splits[0].endswith("maze") else "play"
        name = parse_ogbench_name("-".join(splits[:-1] + [guess, splits[-1]]), pixels=None)
    if name.singletask:
        raise ValueError(
            f"{env!r} is a single-task name; generate its base dataset instead: --env {name.file_stem} "
            "(single-task rewards are computed at load time)."
        )
    if (name.suite, name.dataset_type) not in GENERATABLE:
        raise ValueError(
            f"Cannot regenerate {name.file_stem!r}: supported are "
            f"{sorted(f'{s}-* {t}' for s, t in GENERATABLE)} (others need an expert policy OGBench does not ship)."
        )
    return name.file_stem, name.base_env_id


def generate_dataset(
    env: str,
    num_episodes: int,
    *,
    dataset_dir: str | None = None,
    workers: int = 1,
    seed: int = 0,
    episode_length: int = 1001,
    val_episodes: int | None = None,
    noise: float | None = None,
    noise_smoothing: float = _PLAY_SMOOTHING,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[str, str]:
    """Generate ``<name>.npz`` and ``<name>-val.npz`` in ``dataset_dir``; return their paths.

    Args:
        env: dataset name (``cube-single-play-v0``) or env id (``cube-single-v0``; play/navigate implied).
        num_episodes: training episodes; ``val_episodes`` (default ``max(1, num_episodes // 10)``) more go to val.
        dataset_dir: output directory, default ``~/.ogbench/data`` (where the loader looks).
        workers: processes; episodes are handed out one at a time, each seeded from ``(seed, index)``.
        seed: base seed; the output is identical for any ``workers``.
        episode_length: steps per episode (1001 as in OGBench; small values make test data).
        noise: oracle noise (default 0.1 for play, 0.2 for navigate); ``noise_smoothing`` for play plans.
        progress: show a tqdm bar over episodes.
        overwrite: replace existing files (otherwise refuse before doing any work).
    """
    file_stem, base_env_id = _resolve(env)
    # Every argument is checked before any episode is generated (a full dataset takes hours).
    for key, value, low in (("episodes", num_episodes, 1), ("episode-length", episode_length, 2),
                            ("workers", workers, 1), ("val-episodes", val_episodes, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low):
            raise ValueError(f"--{key} must be an integer >= {low}, got {value!r}")
    dataset_dir = os.path.expanduser(dataset_dir) if dataset_dir else default_dataset_dir()
    check_writable(dataset_dir, "dataset directory")
    train_path = os.path.join(dataset_dir, f"{file_stem}.npz")
    val_path = os.path.join(dataset_dir, f"{file_stem}-val.npz")
    # One writer per file: a second generator (started later or at the same moment) is refused.
    with FileLock(os.path.join(dataset_dir, f".{file_stem}.lock"), what=f"dataset {train_path}"):
        for p in (train_path, val_path):
            if os.path.exists(p) and not overwrite:
                raise FileExistsError(f"{p} exists; pass overwrite=True (CLI: --force) to replace it")
        return _generate(file_stem, base_env_id, num_episodes, train_path, val_path, workers=workers, seed=seed,
                         episode_length=episode_length, val_episodes=val_episodes, noise=noise,
                         noise_smoothing=noise_smoothing, progress=progress)


def _generate(file_stem, base_env_id, num_episodes, train_path, val_path, *, workers, seed, episode_length,
              val_episodes, noise, noise_smoothing, progress) -> tuple[str, str]:
    n_val = max(1, num_episodes // 10) if val_episodes is None else val_episodes
    suite = suite_of(base_env_id)
    pixels = base_env_id.startswith(VISUAL_PREFIX)
    if pixels:  # every step renders a 64x64 frame: needs a headless GL context (EGL)

        ensure_headless_gl()
    spec = dict(
        env_id=base_env_id,
        suite=suite,
        pixels=pixels,
        frame_counter=mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Value("q", 0)
        if pixels else None,
        seed=seed,
        episode_length=episode_length,
        noise=(_NAVIGATE_NOISE if suite == "pointmaze" else _PLAY_NOISE) if noise is None else noise,
        noise_smoothing=noise_smoothing,
    )
    total = num_episodes + n_val
    episodes: list[dict[str, np.ndarray] | None] = [None] * total

    from tqdm import tqdm

    counter = spec["frame_counter"]
    bar = tqdm(total=total * episode_length if pixels else total, desc=f"generate {file_stem}",
               unit="frame" if pixels else "ep", disable=not progress)

    def advance() -> None:  # frames (visual, shared counter; scene redraws can overshoot) or episodes
        bar.update(min(counter.value, bar.total) - bar.n if pixels else 1)

    if workers == 1:
        _init_worker(spec)
        if pixels:
            _STATE["on_frame"] = advance
        for i in range(total):
            episodes[i] = _run_episode(i)[1]
            if not pixels:
                advance()
    else:
        # fork where the OS has it: spawn would re-import deflow_trl (torch, torchrl) in every worker,
        # seconds each; the workers only run MuJoCo and numpy, so no torch state is used after the fork.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, total), initializer=_init_worker, initargs=(spec,)) as pool:
            results, done = pool.imap_unordered(_run_episode, range(total)), 0
            while done < total:
                try:  # poll, so a visual run's frame counter refreshes the bar between episodes
                    i, ep = results.next(timeout=0.5)
                except mp.TimeoutError:
                    if pixels:
                        advance()
                    continue
                episodes[i], done = ep, done + 1
                advance()
    bar.close()

    def concat(eps):
        return {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}

    # Validation first: if the run dies between the two renames, the train file (what the loader
    # looks for first) is absent rather than paired with a stale val file.
    atomic_savez(val_path, concat(episodes[num_episodes:]))
    atomic_savez(train_path, concat(episodes[:num_episodes]))
    return train_path, val_path


def main(argv: list[str] | None = None) -> None:
    """``python -m deflow_trl.data.generate`` / ``deflow-generate`` (``--help`` lists the arguments)."""

    quiet_app()  # the app's process only: headless GL, no gymnasium/absl/GLFW noise (workers inherit it)
    p = argparse.ArgumentParser(
        prog="python -m deflow_trl.data.generate", description=__doc__.split("\n\n")[0],
        epilog="Pixel datasets (visual-cube-*, visual-scene, visual-puzzle-*): every step renders a 64x64 frame "
        "with MuJoCo's EGL backend (MUJOCO_GL=egl, set automatically when unset); without a GPU this costs "
        "about 0.3-0.6 s per frame (a 1001-step episode: 5-10 min), so only tiny visual datasets are practical "
        "on CPU machines (e.g. --episodes 2 --episode-length 101). Full official visual datasets: download "
        "them where there is internet. The progress bar counts frames and shows the ETA.",
    )
    p.add_argument("--env", required=True, help="dataset name (cube-single-play-v0) or env id (cube-single-v0)")
    p.add_argument("--episodes", type=int, default=1000, help="training episodes (OGBench: 1000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--dataset-dir", default=None, help="output dir (default ~/.ogbench/data, the loader's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episode-length", type=int, default=1001, help="steps per episode (OGBench: 1001)")
    p.add_argument("--val-episodes", type=int, default=None, help="validation episodes (default episodes // 10, >= 1)")
    p.add_argument("--noise", type=float, default=None, help="oracle noise (default 0.1 play, 0.2 navigate)")
    p.add_argument("--noise-smoothing", type=float, default=_PLAY_SMOOTHING)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        train, val = generate_dataset(
            a.env, a.episodes, dataset_dir=a.dataset_dir, workers=a.workers, seed=a.seed,
            episode_length=a.episode_length, val_episodes=a.val_episodes, noise=a.noise,
            noise_smoothing=a.noise_smoothing, progress=not a.no_progress, overwrite=a.force,
        )
    except (ValueError, OSError) as err:  # bad arguments, a locked or existing file, disk full: one line

        line = one_line(err) or " ".join(str(err).split())
        if debug_requested():
            raise
        sys.stderr.write(f"[deflow_trl.data.generate] error: {line}\n")
        raise SystemExit(2) from None
    with np.load(train) as f:
        n = len(f["terminals"])
    print(f"wrote {train} ({n} steps) and {val} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
