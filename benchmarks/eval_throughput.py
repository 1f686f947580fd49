"""Evaluation throughput: the same episodes one at a time, on a SerialEnv, and on a ParallelEnv.

A DeFlow actor (2×256 by default, K = 10) on an OGBench single-task env; every
configuration runs the same ``--episodes`` episodes with the same seed, and the script
checks that the per-episode successes, returns and lengths are identical across them
(:func:`deflow_trl.envs.evaluation.evaluate`'s guarantee for actors with a noise key). Time
includes building and closing the env (a ``ParallelEnv`` starts one Python process per
worker); ``env_build_s`` reports that part separately.

    python benchmarks/eval_throughput.py                                    # 50 episodes, untrained actor
    python benchmarks/eval_throughput.py --checkpoint runs/quick/deflow/cube-single-play-singletask-task1-v0/seed0/checkpoints/ckpt_000012000.pt

Prints one JSON line per configuration, then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def build_policy(args, obs_dim: int, act_dim: int):
    from deflow_trl import make_deflow

    torch.manual_seed(0)
    policy, loss = make_deflow(obs_dim, act_dim, hidden_sizes=tuple(args.hidden_sizes))
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        loss.load_state_dict(state["loss"])
    return policy.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cube-single-play-singletask-task1-v0")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--checkpoint", default=None, help="a train checkpoint of the same sizes (loss state)")
    parser.add_argument("--configs", nargs="+", default=["sequential", "serial:2", "serial:10", "parallel:2"],
                        help="sequential, serial:N or parallel:N; a trailing :exact sets batch_invariant=True")
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    from deflow_trl.envs import make_ogbench_env
    from deflow_trl.envs.evaluation import _make_env, evaluate

    probe = make_ogbench_env(args.dataset)
    obs_dim, act_dim = probe.observation_spec["observation"].shape[-1], probe.action_spec.shape[-1]
    probe.close()
    policy = build_policy(args, obs_dim, act_dim)
    torch.set_num_threads(1)  # one thread per process: the ParallelEnv workers use the other core

    rows, reference = [], None
    for config in args.configs:
        kind, n, *flags = config.split(":") + ([""] if config == "sequential" else [])
        num_envs, parallel = (1, False) if kind == "sequential" else (int(n), kind == "parallel")
        t0 = time.perf_counter()
        env, _ = _make_env(args.dataset, num_envs, parallel)
        env.reset()  # starts ParallelEnv workers
        built = time.perf_counter() - t0
        out = evaluate(policy, env, args.episodes, seed=args.seed, progress=False, max_steps=args.max_steps,
                       batch_invariant="exact" in flags)
        env.close()
        total = time.perf_counter() - t0
        steps = sum(out["lengths"])
        same = reference is None or all(out[k] == reference[k] for k in ("successes", "returns", "lengths"))
        reference = reference or out
        row = {"config": config, "episodes": args.episodes, "success_rate": out["success_rate"], "env_steps": steps,
               "env_build_s": round(built, 2), "total_s": round(total, 2),
               "steps_per_s": round(steps / (total - built), 1), "same_episodes_as_first": same}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| config | success | env steps | env build (s) | total (s) | steps/s (excl. build) | same episodes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {100 * r['success_rate']:.0f}% | {r['env_steps']} | {r['env_build_s']} | "
              f"{r['total_s']} | {r['steps_per_s']} | {r['same_episodes_as_first']} |")


if __name__ == "__main__":
    main()
