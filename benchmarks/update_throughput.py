"""Update throughput of DeFlow: eager vs compiled (vs compiled + bf16 solves).

One update = loss forward + backward + Adam step + Polyak target update
(:class:`deflow_trl.update.Updater`), on a fixed random batch, at the
reference sizes (obs 28, act 5, 4×512 MLPs, K = 10, 2 critics, batch 256) and
a small configuration (2×64) and the README main run's (2×256, `--config quick`). Reports the median over repeats, the compile time
separately, the GEMM FLOPs per update (counted from the layer sizes, checked
against ``torch.utils.flop_counter``), the achieved GFLOP/s and the machine's
fp32/bf16 ``torch.matmul`` rate measured in the same run, and, for bf16 solves,
the change of every loss vs fp32 from the same state and RNG.

    python benchmarks/update_throughput.py                  # full (≈ 5 min cold)
    python benchmarks/update_throughput.py --quick          # ≤ 90 s
    python benchmarks/update_throughput.py --json out.json
    python benchmarks/update_throughput.py --config reference --threads 1
    python benchmarks/update_throughput.py --device cuda --config reference   # + "compiled, no CUDA graphs"
    python benchmarks/update_throughput.py --config reference --fql --no-compile   # DeFlow vs FQL, same run
    python benchmarks/update_throughput.py --config pixels --pixel-batch 256     # impala_small ×3 on 64×64×9 frames
    python benchmarks/update_throughput.py --seeds 1 2 4 8      # seeds in one process vs lone runs (seed_throughput.py)

On CUDA the compiled modes capture the step in a CUDA graph (the
``Updater``'s default there); without ``--quick``, ``compiled, no CUDA
graphs`` is timed beside them. ``--compile-backend eager`` (dynamo without inductor: seconds, not
minutes) is for testing this script's plumbing, not for timing.

Set ``TORCHINDUCTOR_CACHE_DIR`` to a persistent folder for warm compiles.
Timings on a shared machine are noisy: the load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Sequence

import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow, make_fql
from deflow_trl.hardware import cpu_description
from deflow_trl.update import Updater

OBS_DIM, ACT_DIM, BATCH, NUM_STEPS, NUM_CRITICS = 28, 5, 256, 10, 2
CONFIGS = {"reference": (512, 512, 512, 512), "small": (64, 64), "quick": (256, 256)}  # quick: the README's main run


# -- FLOPs -------------------------------------------------------------------
def _macs(sizes: Sequence[int]) -> int:
    """Multiply-adds per sample of an MLP with layer widths ``sizes``."""
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def update_flops(
    obs_dim: int,
    act_dim: int,
    hidden: Sequence[int],
    batch: int,
    num_steps: int = NUM_STEPS,
    num_critics: int = NUM_CRITICS,
    evals_per_step: int = 1,
) -> dict[str, int]:
    """GEMM FLOPs (2 per multiply-add) of one DeFlow update, by part.

    The minimal work of the algorithm as implemented: one no-grad ODE solve on
    the 2B stacked states (observation projection once, then K velocity
    evaluations on ``x``), no-grad refiner and target ensemble on s', critic
    fwd+bwd on (s, a), flow fwd+bwd on x_t, refiner fwd+bwd on s, critic
    fwd+bwd-to-input on a_π (params detached). Backward = weight grads + input
    grads, minus the input grads of first layers whose input needs none.
    Elementwise ops (GELU, LayerNorm, Adam) are not counted.
    """
    h = list(hidden)
    first_v = (obs_dim + act_dim + 1) * h[0]
    first_r = first_q = (obs_dim + act_dim) * h[0]
    m_v = _macs([obs_dim + act_dim + 1, *h, act_dim])
    m_r = _macs([obs_dim + act_dim, *h, act_dim])
    m_q = _macs([obs_dim + act_dim, *h, 1])
    m_v_step = m_v - first_v + act_dim * h[0]  # x-part of the first layer only
    B, E = batch, num_critics
    macs = {
        "ode_solve (2B, no grad)": 2 * B * (obs_dim * h[0] + num_steps * evals_per_step * m_v_step),
        "refiner s' (no grad)": B * m_r,
        "target critic s' (no grad)": E * B * m_q,
        "critic (s,a) fwd+bwd": E * B * (3 * m_q - first_q),
        "flow x_t fwd+bwd": B * (3 * m_v - first_v),
        "refiner s fwd+bwd": B * (3 * m_r - first_r),
        "critic a_pi fwd+bwd-to-input": E * B * 2 * m_q,
    }
    flops = {k: 2 * v for k, v in macs.items()}
    flops["total"] = sum(flops.values())
    return flops


def counted_flops(updater: Updater, batch: TensorDict) -> int:
    """GEMM FLOPs of one eager update as counted by ``torch.utils.flop_counter``'s
    per-op formulas (a dispatch mode of its own: ``FlopCounterMode``'s module
    tracker cannot hash TensorDictParams)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            return out

    with _Counter() as counter:
        updater.eager_step(batch)
    return counter.total


# -- set-up --------------------------------------------------------------------
def make_batch(batch: int = BATCH, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, device="cpu") -> TensorDict:
    return TensorDict(
        {
            "observation": torch.randn(batch, obs_dim),
            "action": torch.rand(batch, act_dim) * 2 - 1,
            "next": {
                "observation": torch.randn(batch, obs_dim),
                "reward": -torch.rand(batch, 1),
                "done": torch.zeros(batch, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch],
    ).to(device)


def make_updater(hidden, *, compile: bool, bf16_solves: bool = False, seed: int = 0, device="cpu",
                 cudagraphs: bool | None = None, compile_options: dict | None = None, agent: str = "deflow") -> Updater:
    torch.manual_seed(seed)
    make = make_fql if agent == "fql" else make_deflow
    _, loss = make(OBS_DIM, ACT_DIM, hidden_sizes=hidden, num_flow_steps=NUM_STEPS, num_critics=NUM_CRITICS,
                   device=device)
    loss.bf16_solves = bf16_solves
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    return Updater(loss, optim, SoftUpdate(loss, tau=0.005), compile=compile,
                   cudagraphs=cudagraphs if compile else None, compile_options=compile_options)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- timing --------------------------------------------------------------------
def time_modes(updaters: dict[str, Updater], batch: TensorDict, steps: int, repeats: int, device="cpu") -> dict[str, dict]:
    """Per mode: the first call's time (the compile, if any), then the median
    over ``repeats`` of the mean time of ``steps`` updates. Repeats are
    interleaved across modes so that a shared machine's load hits them alike."""
    results = {}
    for mode, updater in updaters.items():
        t0 = time.perf_counter()
        updater(batch)  # compile (if any) happens here
        sync(device)
        results[mode] = {"first_call_s": time.perf_counter() - t0, "samples_ms": []}
        for _ in range(updater.warmup + 2 if updater.cudagraphs else 1):
            updater(batch)  # a second call may still specialise; CUDA graphs capture after `warmup` calls
        sync(device)
    for _ in range(repeats):
        for mode, updater in updaters.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                updater(batch)
            sync(device)
            results[mode]["samples_ms"].append(1e3 * (time.perf_counter() - t0) / steps)
    for r in results.values():
        r["ms_per_update"] = statistics.median(r["samples_ms"])
        r["min_ms_per_update"] = min(r["samples_ms"])
        r["updates_per_s"] = 1e3 / r["ms_per_update"]
    return results


def gemm_gflops(m: int, k: int, n: int, dtype=torch.float32, bursts: int = 7, seconds: float = 0.1,
                device="cpu") -> float:
    """``torch.matmul`` rate, best of ``bursts`` short bursts (the machine's
    peak for that shape; a shared machine's contention only lowers samples)."""
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(bursts):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
            if reps % 16 == 0:
                sync(device)
        sync(device)
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def bf16_loss_effect(hidden, batch: TensorDict, device="cpu") -> dict:
    """Relative change of each loss with bf16 solves, same state and RNG."""
    out = {}
    for bf16 in (False, True):
        updater = make_updater(hidden, compile=False, bf16_solves=bf16, device=device)
        torch.manual_seed(123)
        with torch.no_grad():
            out[bf16] = updater.loss(batch)
    keys = ["loss_qvalue", "loss_flow", "loss_actor", "loss_alpha", "flow_bc_mse", "target_mean"]
    return {k: float((out[True][k] - out[False][k]).abs() / out[False][k].abs().clamp_min(1e-12)) for k in keys}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="≤ 90 s: fewer repeats, no compiled run at the reference size")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per mode (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--config", choices=sorted([*CONFIGS, "pixels"]), action="append", default=None,
                        help="only these configurations (repeatable; default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--fql", action="store_true",
                        help="also time FQL's update (same critic and flow; distils a one-step policy) in the same run")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the compiled modes (default inductor; 'eager' tests plumbing only)")
    parser.add_argument("--pixel-batch", type=int, default=BATCH, help="batch of --config pixels (reference 256)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="several seeds in one process instead: seed-updates/s of a SeedGroup of each size vs the "
                             "same lone runs one after another and one process per CPU (benchmarks/seed_throughput.py)")
    args = parser.parse_args(argv)
    if args.seeds:
        import seed_throughput

        configs = args.config or ["quick", "reference"]
        return seed_throughput.main(["--seeds", *map(str, args.seeds), "--config", *configs,
                                     *(["--threads", str(args.threads)] if args.threads else []),
                                     *(["--json", args.json] if args.json else [])])
    device = torch.device(args.device)
    if args.config and "pixels" in args.config:
        if args.config != ["pixels"]:
            parser.error("--config pixels runs on its own (its batch and networks differ)")
        return pixel_benchmark(args, device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    compile_options = {"backend": args.compile_backend} if args.compile_backend else None
    cpu_line = cpu_description()
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"CPU: {cpu_line}" + (f"\nGPU: {gpu_name}" if gpu_name else ""), flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    torch.manual_seed(0)
    batch = make_batch(device=device)

    load_before = os.getloadavg()
    if load_before[0] > 1.5 and not args.threads:
        print(f"warning: load average {load_before[0]:.1f} on this machine: multi-threaded timings will be "
              "contended (OpenMP threads wait on busy cores); --threads 1 degrades more gracefully", flush=True)
    gemm = {
        "fp32 2048^3": gemm_gflops(2048, 2048, 2048, bursts=3, seconds=0.3, device=device),
        "fp32 256x512x512": gemm_gflops(256, 512, 512, device=device),
        "bf16 256x512x512": gemm_gflops(256, 512, 512, torch.bfloat16, device=device),
    }
    layer_rate = gemm["fp32 256x512x512"]
    rows, flops_by_config = [], {}
    for name, hidden in CONFIGS.items():
        if args.config and name not in args.config:
            continue
        flops = update_flops(OBS_DIM, ACT_DIM, hidden, BATCH)
        flops["counted (torch FlopCounterMode)"] = counted_flops(make_updater(hidden, compile=False, device=device), batch)
        flops_by_config[name] = flops
        small = name in ("small", "quick")  # cheap enough for more steps and a compiled run under --quick
        steps = (10 if args.quick else 20) if small else 3
        if device.type == "cuda":
            steps = 20 if args.quick else 50
        modes = [("eager", False, False), ("eager + bf16 solves", False, True)]
        if not args.no_compile and (small or not args.quick or device.type == "cuda"):
            graphs = " (+ CUDA graphs)" if device.type == "cuda" else ""
            modes += [("compiled" + graphs, True, False), ("compiled + bf16 solves" + graphs, True, True)]
            if device.type == "cuda" and not args.quick:  # one more cold compile (≈ a minute)
                modes.append(("compiled, no CUDA graphs", "no-graphs", False))
        if args.quick and device.type != "cuda":
            modes = [m for m in modes if "bf16" not in m[0] or not small]
        if args.fql:  # FQL beside DeFlow, interleaved in the same timing loop
            modes += [("FQL " + m, c, bf16) for m, c, bf16 in modes if "bf16" not in m]
        updaters = {
            mode: make_updater(hidden, compile=bool(c), bf16_solves=bf16, device=device,
                               cudagraphs=False if c == "no-graphs" else None, compile_options=compile_options,
                               agent="fql" if mode.startswith("FQL") else "deflow")
            for mode, c, bf16 in modes
        }
        if args.fql:
            flops["FQL counted (torch FlopCounterMode)"] = counted_flops(
                make_updater(hidden, compile=False, device=device, agent="fql"), batch)
        for mode, r in time_modes(updaters, batch, steps, repeats, device).items():
            total = flops["FQL counted (torch FlopCounterMode)"] if mode.startswith("FQL") else flops["total"]
            r.update(config=name, mode=mode, gflops=total / 1e9 * r["updates_per_s"])
            r["percent_of_fp32_gemm"] = 100 * r["gflops"] / layer_rate
            rows.append(r)
            print(f"  {name:16s} {mode:24s} {r['ms_per_update']:8.2f} ms (compile/first call {r['first_call_s']:.1f} s)", flush=True)
    bf16_effect = bf16_loss_effect(CONFIGS["reference"] if not args.config else CONFIGS[args.config[0]], batch, device)

    print("\nGEMM rate (torch.matmul, this run): " + ", ".join(f"{k}: {v:.0f} GFLOP/s" for k, v in gemm.items()))
    for name, flops in flops_by_config.items():
        print(f"\nGEMM FLOPs per update, {name} {CONFIGS[name]} (batch {BATCH}, K={NUM_STEPS}):")
        for part, f in flops.items():
            print(f"  {part:34s} {f / 1e9:8.3f} GFLOP")
    print("\n| config | mode | first call (compile) s | ms / update (median) | min ms | updates/s | GFLOP/s | % of fp32 GEMM (256x512x512) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['config']} | {r['mode']} | {r['first_call_s']:.1f} | {r['ms_per_update']:.2f} | "
              f"{r['min_ms_per_update']:.2f} | {r['updates_per_s']:.1f} | {r['gflops']:.0f} | {r['percent_of_fp32_gemm']:.0f}% |")
    print("\nbf16 solves, relative change vs fp32 (reference sizes, same state and RNG, one forward):")
    for k, v in bf16_effect.items():
        print(f"  {k:12s} {v:.2e}")
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_line,
                    "device": str(device), "gpu": gpu_name, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "sizes": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "batch": BATCH, "K": NUM_STEPS, "num_critics": NUM_CRITICS},
        "gemm_gflops": gemm,
        "flops_per_update": flops_by_config,
        "rows": rows,
        "bf16_solves_relative_change": bf16_effect,
        "quick": args.quick,
    }
    print(f"\nload average before / after: {load_before} / {os.getloadavg()} "
          "(a 2-core machine: timings with load > 2 are contended)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


# -- pixels ----------------------------------------------------------------------------
PIXEL_SHAPE = (64, 64, 9)  # 3 stacked 64x64 RGB frames, uint8, channels-last (the reference's pixel suites)


def make_pixel_batch(batch: int, device="cpu") -> TensorDict:
    frames = lambda: torch.randint(0, 256, (batch, *PIXEL_SHAPE), dtype=torch.uint8)  # noqa: E731
    return TensorDict({"observation": frames(), "action": torch.rand(batch, ACT_DIM) * 2 - 1,
                       "next": {"observation": frames(), "reward": -torch.rand(batch, 1),
                                "done": torch.zeros(batch, 1, dtype=torch.bool),
                                "terminated": torch.zeros(batch, 1, dtype=torch.bool)}}, [batch]).to(device)


def _peak_memory_mb(device) -> float:
    """Peak memory so far: CUDA allocator peak, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def pixel_benchmark(args, device) -> dict:
    """``--config pixels``: one update with impala_small encoders ×3 and 4×512 heads on
    ``[B, 64, 64, 9]`` uint8 batches (docs/design.md §3): eager vs compiled, the peak memory of
    each mode's first update (CPU: the process's peak RSS growth, so the modes run eager first)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_pixel_batch(args.pixel_batch, device)
    repeats, steps = args.repeats or (2 if args.quick else 3), 1 if device.type == "cpu" else 10
    modes = [("eager", False)] + ([] if args.no_compile else [("compiled", True)])
    rows, updaters = [], {}
    for mode, compile_ in modes:
        torch.manual_seed(0)
        _, loss = make_deflow(PIXEL_SHAPE, ACT_DIM, hidden_sizes=CONFIGS["reference"], num_flow_steps=NUM_STEPS,
                              encoder="impala_small", device=device)
        optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        updaters[mode] = Updater(loss, optim, SoftUpdate(loss, tau=0.005), compile=compile_,
                                 compile_options={"backend": args.compile_backend} if args.compile_backend else None)
        before = _peak_memory_mb(device)
        updaters[mode](batch)  # first call (the compile, if any); measures the update's peak memory
        rows.append({"mode": mode, "peak_memory_growth_mb": _peak_memory_mb(device) - before})
    timings = time_modes(updaters, batch, steps, repeats, device)
    print(f"CPU: {cpu_description()}")
    print("\n| config | mode | batch | first call s | ms / update (median) | peak memory growth MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        row.update(timings[row["mode"]], config="pixels", batch=args.pixel_batch)
        print(f"| pixels | {row['mode']} | {args.pixel_batch} | {row['first_call_s']:.1f} | {row['ms_per_update']:.0f} | "
              f"{row['peak_memory_growth_mb']:.0f} |")
    if device.type == "cpu" and "bf16" not in cpu_description():
        print("bf16 autocast: not timed (no native bf16 on this CPU; see deflow_trl.hardware)")
    result = {"machine": {"cpu": cpu_description(), "device": str(device), "threads": torch.get_num_threads(),
                          "loadavg": os.getloadavg()}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
