"""Throughput and latency of DeFlow's ODE sampler, per backend.

Runs ``FlowSampler(...)(obs, noise)`` (K Euler steps + one refinement: the
unit the policy calls for every action) at the reference sizes (obs 28,
action 5, 4×512 MLPs, K = 10) for each available backend and batch size, and
prints a table: latency (median of repeats, warm-up excluded), actions/s, the
achieved GFLOP/s (multiply-adds of every linear layer counted exactly from the
layer sizes: obs projection once, K velocity evaluations, one refinement), its
fraction of the machine's GEMM rate measured in the same run, and the speed-up
over eager from the same run. Compile time (the first call, cold or from the
inductor cache) is reported separately. bf16 backends also report their action
error against fp32 on the same noise (random Xavier weights).

    python benchmarks/sampler_throughput.py                  # full: batch 1, 16, 256, 4096
    python benchmarks/sampler_throughput.py --quick          # ≤ 60 s on a 2-core CPU
    python benchmarks/sampler_throughput.py --json out.json --device cuda   # + triton, triton-tf32, triton-bf16

The CPU model and its bf16-relevant flags are printed and stored (bf16 is
≈ 4× *slower* than fp32 on CPUs without avx512_bf16/amx_bf16, see
:mod:`deflow_trl.hardware`). GEMM rates: fp32 and bf16 at the layer shapes
(batch × 512 × 512 for batch 256 and 4096) and at a large square (2048³ on
CPU, 8192³ on CUDA: the card's peak), except bf16 2048³ on a CPU without
native bf16 (minutes of emulation). With ``--json`` the file is rewritten
after every backend, so a run cut short still leaves its rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from deflow_trl.backends import compiled_unit
from deflow_trl.flow_weights import flow_weights
from deflow_trl.hardware import cpu_description, native_bf16
from deflow_trl.kernels import TRITON_AVAILABLE
from deflow_trl.nets import Refiner, VelocityField
from deflow_trl.sampler import FlowSampler

OBS_DIM, ACTION_DIM, HIDDEN = 28, 5, (512, 512, 512, 512)


def flops_per_action(velocity: VelocityField, refiner: Refiner, num_steps: int, solver: str = "euler") -> int:
    """2 × multiply-adds of every matmul one action costs (bias adds, GELU and
    the Euler update are not counted)."""
    v = [(lin.in_features, lin.out_features) for lin in velocity.mlp.linears]
    first_in, h0 = v[0]
    obs_proj = velocity.observation_dim * h0
    per_eval = (first_in - velocity.observation_dim) * h0 + sum(i * o for i, o in v[1:])  # x and t columns, rest
    evals = num_steps * (2 if solver == "midpoint" else 1)
    refine = sum(lin.in_features * lin.out_features for lin in refiner.mlp.linears)
    return 2 * (obs_proj + evals * per_eval + refine)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats: int, warmup: int, budget_s: float) -> tuple[float, float]:
    """(first-call seconds, median seconds of the timed repeats)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    sync(device)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def gemm_rates(device: torch.device, quick: bool, width: int = 512, batches=(256, 4096)) -> dict[str, float]:
    """GFLOP/s of ``torch.matmul`` at the sampler's layer shapes (``batch × width × width``)
    and at a large square (2048³ on CPU, 8192³ on CUDA; skipped in bf16 where bf16 is emulated)."""
    out = {}
    square = 8192 if device.type == "cuda" else 2048
    shapes = [(b, width, width) for b in sorted(set(batches))] + [(square, square, square)]
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for m, k, n in shapes:
            big = m == square
            if big and (quick or (dtype == torch.bfloat16 and not native_bf16(device))):
                continue
            a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
            _, t = time_call(lambda a=a, b=b: a @ b, device, 5 if big else 50, 2 if big else 10, 1.0 if quick else 3.0)
            out[f"{name} {m}x{k}x{n}"] = 2 * m * k * n / t / 1e9
    return out


def backends_for(device: torch.device) -> list[str]:
    names = ["eager", "eager-bf16", "compile", "compile-bf16"]
    if device.type == "cuda" and TRITON_AVAILABLE:
        names += ["triton", "triton-tf32", "triton-bf16"]
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batches 1 and 256, fewer repeats (≤ 60 s on 2 CPU cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="*", default=None, help="default 1 16 256 4096 (quick: 1 256)")
    p.add_argument("--backends", nargs="*", default=None, help="default: every backend available on the device")
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN), help="hidden widths (default 512 512 512 512)")
    p.add_argument("--compile-modes", nargs="*", default=[],
                   help="extra torch.compile modes to time for fp32 (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    hidden = tuple(args.hidden)
    cpu_line = cpu_description()
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"CPU: {cpu_line}" + (f"\nGPU: {gpu_name}" if gpu_name else ""), flush=True)
    batches = args.batches or ([1, 256] if args.quick else [1, 16, 256, 4096])
    repeats, warmup, budget = (10, 2, 1.0) if args.quick else (50, 5, 4.0)
    torch.manual_seed(0)
    velocity = VelocityField(OBS_DIM, ACTION_DIM, hidden).to(device)
    refiner = Refiner(OBS_DIM, ACTION_DIM, hidden).to(device)
    flops = flops_per_action(velocity, refiner, args.num_steps)

    t_start = time.perf_counter()
    gemm = gemm_rates(device, args.quick, hidden[0], [b for b in batches if b > 1] or [256])
    rows: list[dict] = []

    def save(complete: bool) -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(device=str(device), gpu=gpu_name, cpu=cpu_line, torch=torch.__version__,
                               threads=torch.get_num_threads(), num_steps=args.num_steps, obs_dim=OBS_DIM,
                               action_dim=ACTION_DIM, hidden=hidden, flops_per_action=flops, gemm_gflops=gemm,
                               rows=rows, total_s=time.perf_counter() - t_start, load_average=os.getloadavg()[0],
                               complete=complete), f, indent=1)

    for name in args.backends or backends_for(device):
        sampler = FlowSampler(velocity, refiner, args.num_steps, backend=name)
        variants = [(name, sampler)]
        if name == "compile":
            for mode in args.compile_modes:
                fn = compiled_unit("policy", "fp32", args.num_steps, "euler", mode=mode)
                label = "compile-" + ("maxautotune" if "max-autotune" in mode else mode)
                variants.append((label, lambda o, n, fn=fn: fn(flow_weights(velocity, refiner, "fp32"), o, n)))
        for label, call in variants:
            for batch in batches:
                gen = torch.Generator(device="cpu").manual_seed(batch)
                obs = torch.randn(batch, OBS_DIM, generator=gen).to(device)
                noise = torch.randn(batch, ACTION_DIM, generator=gen).to(device)
                with torch.no_grad():
                    first, t = time_call(lambda call=call, obs=obs, noise=noise: call(obs, noise), device, repeats, warmup, budget)
                row = dict(backend=label, batch=batch, latency_ms=t * 1e3, actions_per_s=batch / t,
                           gflops=flops * batch / t / 1e9, first_call_s=first)
                if "bf16" in label:
                    with torch.no_grad():
                        ref = FlowSampler(velocity, refiner, args.num_steps)(obs, noise)
                        err = (call(obs, noise).float() - ref).abs()
                    row.update(err_mean=err.mean().item(), err_max=err.max().item())
                rows.append(row)
                print(f"  {label:>14} batch {batch:>5}: {t * 1e3:9.3f} ms  (first call {first:6.2f} s)", flush=True)
            save(complete=False)

    eager = {r["batch"]: r["latency_ms"] for r in rows if r["backend"] == "eager"}
    fp32_gemm = next(v for k, v in gemm.items() if k.startswith("fp32 "))  # the smallest layer shape
    for r in rows:
        r["speedup_vs_eager"] = eager[r["batch"]] / r["latency_ms"] if r["batch"] in eager else None
        r["fraction_of_fp32_gemm"] = r["gflops"] / fp32_gemm
        same_shape = gemm.get(f"{'bf16' if 'bf16' in r['backend'] else 'fp32'} {r['batch']}x{hidden[0]}x{hidden[0]}")
        r["fraction_of_gemm_same_shape"] = r["gflops"] / same_shape if same_shape else None

    print(f"\ndevice {device} ({gpu_name or platform.machine()}, {torch.get_num_threads()} CPU threads), "
          f"torch {torch.__version__}, K={args.num_steps}, obs {OBS_DIM}, act {ACTION_DIM}, hidden {hidden}")
    print(f"CPU: {cpu_line}")
    print(f"FLOPs per action: {flops / 1e6:.2f} M (obs projection once, {args.num_steps} velocity evals, refiner once)")
    print("GEMM rate (torch.matmul): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    print()
    head = f"| {'backend':<16} | {'batch':>5} | {'latency ms':>10} | {'actions/s':>10} | {'GFLOP/s':>7} | " \
           f"{'% fp32 GEMM':>11} | {'% GEMM same shape':>17} | {'vs eager':>8} | {'1st call s':>10} | {'Δa mean/max vs fp32':>21} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        err = f"{r['err_mean']:.1e} / {r['err_max']:.1e}" if "err_max" in r else ""
        sp = f"{r['speedup_vs_eager']:.2f}×" if r["speedup_vs_eager"] else ""
        same = f"{100 * r['fraction_of_gemm_same_shape']:.0f}%" if r["fraction_of_gemm_same_shape"] else ""
        print(f"| {r['backend']:<16} | {r['batch']:>5} | {r['latency_ms']:>10.3f} | {r['actions_per_s']:>10.0f} | "
              f"{r['gflops']:>7.1f} | {100 * r['fraction_of_fp32_gemm']:>10.0f}% | {same:>17} | {sp:>8} | "
              f"{r['first_call_s']:>10.2f} | {err:>21} |")
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.1f} s; load average at the end {os.getloadavg()[0]:.1f} "
          "(other processes on the machine distort CPU numbers)")
    save(complete=True)


if __name__ == "__main__":
    main()
