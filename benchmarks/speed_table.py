"""The speed issue's whole table in one run: every figure beside the machine's GEMM rate measured in the same run.

Rows (fp32, obs 28, action 5, K = 10, batch 256 unless said):

* the yardstick: ``torch.matmul`` 256×512×512 (fp32; bf16 where native);
* sampler, batch 1 (one action's latency) and batch 256 (actions/s), the ``compile`` backend (what ``auto``
  picks on a CPU with a compiler) and ``eager``, 4×512 networks;
* update at the reference size (4×512) and at the quick size (2×256), eager and compiled (the app's default);
* the quick update beside one CPU-bound neighbour process (``benchmarks/neighbour.py``: torch's default
  spinning, the apps' ``GOMP_SPINCOUNT=1000``, one thread).

Each figure gets its GFLOP/s and its fraction of the fp32 GEMM rate. The machine line (CPU model and flags,
usable CPUs, threads, torch, load average before/after) is printed and stored; the JSON holds no paths.

    python benchmarks/speed_table.py --json speed_table.json      # ≈ 6 min on 2 cores (three cold compiles)
    python benchmarks/speed_table.py --no-neighbour               # without the neighbour rows (≈ 1 min less)

Run it on a quiet machine: the neighbour rows bring their own load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from sampler_throughput import flops_per_action  # noqa: E402
from update_throughput import CONFIGS, gemm_gflops, make_batch, make_updater, time_modes, update_flops  # noqa: E402

from deflow_trl.hardware import cpu_description, native_bf16  # noqa: E402
from deflow_trl.nets import Refiner, VelocityField  # noqa: E402
from deflow_trl.sampler import FlowSampler  # noqa: E402
from deflow_trl.threads import usable_cpus  # noqa: E402

OBS, ACT, K, BATCH = 28, 5, 10, 256


def median_ms(fn, calls: int, repeats: int = 9) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append(1e3 * (time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def sampler_rows(backend: str) -> list[dict]:
    torch.manual_seed(0)
    v, r = VelocityField(OBS, ACT), Refiner(OBS, ACT)
    sampler = FlowSampler(v, r, K, backend=backend)
    flops = flops_per_action(v, r, K)
    rows = []
    with torch.no_grad():
        for batch, calls in ((1, 100), (BATCH, 5)):
            obs, noise = torch.randn(batch, OBS), torch.randn(batch, ACT)
            t0 = time.perf_counter()
            sampler(obs, noise)
            first = time.perf_counter() - t0
            time.sleep(2.0 if first > 1 else 0)  # let inductor's compile workers go quiet before timing
            ms = median_ms(lambda obs=obs, noise=noise: sampler(obs, noise), calls)
            rows.append({"figure": f"sampler, batch {batch}, {backend}", "ms": ms, "gflops": flops * batch / ms / 1e6,
                         "first_call_s": first, **({"actions_per_s": batch / ms * 1e3} if batch > 1 else {})})
    return rows


def update_rows() -> list[dict]:
    batch = make_batch()
    rows = []
    for config, modes in (("reference", ("eager", "compiled")), ("quick", ("eager", "compiled"))):
        hidden = CONFIGS[config]
        updaters = {m: make_updater(hidden, compile=(m == "compiled")) for m in modes}
        timed = time_modes(updaters, batch, steps=3 if config == "reference" else 10, repeats=5)
        flops = update_flops(OBS, ACT, hidden, BATCH, K, 2)["total"]
        for mode, r in timed.items():
            rows.append({"figure": f"update, {config} ({'×'.join(map(str, hidden))}), {mode}", "ms": r["ms_per_update"],
                         "gflops": flops / r["ms_per_update"] / 1e6, "first_call_s": r["first_call_s"]})
    return rows


def neighbour_rows() -> list[dict]:
    """The quick eager update quiet and beside one busy process, per thread policy (``neighbour.py``'s JSON)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "neighbour.json")
        out = subprocess.run([sys.executable, os.path.join(HERE, "neighbour.py"), "--policies", "active", "spin1k", "one",
                              "--json", path], capture_output=True, text=True, check=False)
        if out.returncode:
            return [{"figure": "neighbour", "error": out.stderr[-500:]}]
        with open(path) as f:
            measured = json.load(f)["rows"]
    return [{"figure": f"update quick eager beside one busy process, {r['policy']} ({r['threads']} threads)",
             "ms": r["neighbour_ms"], "quiet_ms": r["quiet_ms"], "slowdown": r["slowdown"],
             "vs_best_quiet": r["neighbour_vs_best_quiet"]} for r in measured]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-neighbour", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    gemm = gemm_gflops(BATCH, 512, 512)
    rows = [{"figure": "torch.matmul 256×512×512 fp32 (the yardstick)", "gflops": gemm}]
    if native_bf16("cpu"):
        rows.append({"figure": "torch.matmul 256×512×512 bf16", "gflops": gemm_gflops(BATCH, 512, 512, dtype=torch.bfloat16)})
    rows += sampler_rows("eager") + sampler_rows("compile") + update_rows()
    if not args.no_neighbour:
        rows += neighbour_rows()
    gemm_after = gemm_gflops(BATCH, 512, 512)
    for r in rows:
        if "gflops" in r and "yardstick" not in r["figure"]:
            r["fraction_of_fp32_gemm"] = r["gflops"] / max(gemm, gemm_after)
    machine = {"cpu": cpu_description(), "usable_cpus": usable_cpus(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "load_before": load_before,
               "load_after": os.getloadavg(), "gemm_fp32_gflops_before_after": [gemm, gemm_after],
               "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}
    print(f"{machine['cpu']}\n{machine['usable_cpus']} usable CPUs, {machine['threads']} threads, torch {torch.__version__}, "
          f"load {load_before[0]:.2f} → {machine['load_after'][0]:.2f}; fp32 GEMM {gemm:.0f} / {gemm_after:.0f} GFLOP/s "
          "(start / end; fractions use the higher)")
    print("| figure | ms | GFLOP/s | % fp32 GEMM | other |\n| --- | ---: | ---: | ---: | --- |")
    for r in rows:
        other = ", ".join(f"{k} {v:.4g}" for k, v in r.items()
                          if k in ("actions_per_s", "first_call_s", "quiet_ms", "slowdown", "vs_best_quiet"))
        ms = f"{r['ms']:.3f}" if "ms" in r else ""
        gf = f"{r['gflops']:.1f}" if "gflops" in r else ""
        frac = f"{100 * r['fraction_of_fp32_gemm']:.0f}%" if "fraction_of_fp32_gemm" in r else ""
        print(f"| {r['figure']} | {ms} | {gf} | {frac} | {r.get('error', other)} |")
    result = {"machine": machine, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
