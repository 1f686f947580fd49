"""A/B in one run of a switch of the compiled CPU code: off (A) vs on (B).

``--switch gelu``: ``deflow_trl.nets.FAST_COMPILED_GELU`` (``F.gelu(approximate="tanh")`` vs the same function as
``x·σ(2u)``); ``--switch gemv``: ``deflow_trl.backends.CPU_GEMV_MAX_BATCH`` (0: every layer a BLAS GEMM call, vs
small batches as inductor-written multiply-and-sum loops). Both variants are compiled in this process (the switch
is a module global, which dynamo guards on, so each value gets its own graph) and timed interleaved, so the
machine's drift hits both alike. Rows: the quick-size update (2×256, batch 256, K = 10, compiled; ``gelu`` only)
and the compiled sampler (4×512, K = 10) at several batch sizes, with the largest difference between the two
variants' actions.

    python benchmarks/ab_compiled_cpu.py --switch gelu --json ab_gelu.json     # ≈ 2-3 min on 2 cores
    python benchmarks/ab_compiled_cpu.py --switch gemv --json ab_gemv.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from update_throughput import CONFIGS, make_batch, make_updater  # noqa: E402

from deflow_trl import backends, nets  # noqa: E402
from deflow_trl.hardware import cpu_description  # noqa: E402
from deflow_trl.nets import Refiner, VelocityField  # noqa: E402
from deflow_trl.sampler import FlowSampler  # noqa: E402

OBS, ACT, K = 28, 5, 10
SWITCHES = {  # name: (module, attribute, {label: value}) -- A first, then B
    "gelu": (nets, "FAST_COMPILED_GELU", {"F.gelu(tanh)": False, "x·σ(2u)": True}),
    "gemv": (backends, "CPU_GEMV_MAX_BATCH", {"BLAS GEMM": 0, "fused GEMV": backends.CPU_GEMV_MAX_BATCH}),
}
SWITCH = "gelu"


def _variants() -> dict:
    return SWITCHES[SWITCH][2]


def _set(value) -> None:
    module, attribute, _ = SWITCHES[SWITCH]
    setattr(module, attribute, value)


def interleaved(calls: dict, n: int, repeats: int) -> dict[str, float]:
    """Median ms per call of each variant's ``(set_up, call)``, repeats alternated."""
    samples = {k: [] for k in calls}
    for _ in range(repeats):
        for k, (set_up, call) in calls.items():
            set_up()
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            samples[k].append(1e3 * (time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def update_row(repeats: int) -> dict:
    batch = make_batch()
    updaters = {}
    for name, value in _variants().items():
        _set(value)
        updaters[name] = make_updater(CONFIGS["quick"], compile=True)
        for _ in range(4):
            updaters[name](batch)

    def set_up(value):
        return lambda: _set(value)

    ms = interleaved({k: (set_up(_variants()[k]), lambda u=u: u(batch)) for k, u in updaters.items()}, 20, repeats)
    return {"figure": "update, quick (2×256), compiled", **ms}


def sampler_rows(repeats: int, batches=(1, 256)) -> list[dict]:
    torch.manual_seed(0)
    v, r = VelocityField(OBS, ACT), Refiner(OBS, ACT)
    units = {}
    for name, value in _variants().items():  # each variant's compiled units, swapped in before its calls
        _set(value)
        backends._compiled.clear()
        sampler = FlowSampler(v, r, K, backend="compile")
        with torch.no_grad():
            for b in batches:
                sampler(torch.randn(b, OBS), torch.randn(b, ACT))
        units[name] = dict(backends._compiled)

    def set_up(name):
        def swap():
            _set(_variants()[name])
            backends._compiled.clear()
            backends._compiled.update(units[name])
        return swap

    rows = []
    with torch.no_grad():
        for b in batches:
            n = max(5, 100 // b)
            obs, noise = torch.randn(b, OBS), torch.randn(b, ACT)
            ms = interleaved({k: (set_up(k), lambda o=obs, z=noise: sampler(o, z)) for k in _variants()}, n, repeats)
            outs = []
            for k in _variants():
                set_up(k)()
                outs.append(sampler(obs, noise))
            rows.append({"figure": f"sampler, batch {b}, compile", **ms,
                         "max_abs_diff": float((outs[0] - outs[1]).abs().max())})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="gelu")
    args = parser.parse_args(argv)
    global SWITCH
    SWITCH = args.switch
    module, attribute, _ = SWITCHES[SWITCH]
    original = getattr(module, attribute)
    load = os.getloadavg()
    try:
        if SWITCH == "gelu":
            rows = [update_row(args.repeats), *sampler_rows(args.repeats)]
        else:
            rows = sampler_rows(args.repeats, batches=(1, 2, 4, 10, 32, 256))
    finally:
        setattr(module, attribute, original)
    a, b = _variants()
    machine = {"switch": f"{module.__name__}.{attribute}", "cpu": cpu_description(), "threads": torch.get_num_threads(),
               "torch": torch.__version__,
               "load_before": load, "load_after": os.getloadavg()}
    print(f"{machine['cpu']}; {machine['threads']} threads; load {load[0]:.2f} → {machine['load_after'][0]:.2f}")
    print(f"| figure | {a} ms | {b} ms | ratio |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        r["ratio"] = r[a] / r[b]
        print(f"| {r['figure']} | {r[a]:.3f} | {r[b]:.3f} | {r['ratio']:.2f}× |")
    result = {"machine": machine, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
