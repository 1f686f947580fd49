"""One command that validates and times every GPU path of deflow_trl (issue 14).

What it runs, each stage a subprocess with its own time limit (a stage that
fails or runs out of time is reported and the next one still runs):

=============  ==================================================================  =======
stage          what                                                                limit s
=============  ==================================================================  =======
tests          ``pytest tests/test_kernels.py tests/test_backends.py`` with         70
               ``DEFLOW_TEST_DEVICE=cuda``: every Triton kernel and every sampler
               backend against eager, fp32 / tf32 / bf16, batch 1, 256, 4096
               (``DEFLOW_TRITON_AUTOTUNE=0``: correctness, not speed)
update         the compiled update, with and without CUDA graphs, against eager:     60
               same init, batches and RNG; every loss/metric and every parameter
               after 6 steps (2×128 MLPs, K = 4, batch 256: small graphs compile
               fast; the reference sizes are timed by update_bench)
sampler        ``benchmarks/sampler_throughput.py --device cuda``: every backend at  110
               batch 1, 256, 4096 (batch 1 = the latency of the whole 10-step
               sample + refinement), GEMM rates of the card
update_bench   ``benchmarks/update_throughput.py --device cuda --config reference``  85
               ``--quick``: eager / compiled + CUDA graphs, each also with bf16
               solves (4 modes; without ``--quick`` also compiled without graphs)
seeds          ``benchmarks/seed_throughput.py --device cuda --seeds 1 2 4 8``         50
               ``--config reference``: seed-updates/s of a SeedGroup of G seeds vs
               G lone eager updaters one after another (issue 24)
train          regenerate a small cube-single dataset (20 episodes), 1,500 steps      105
               of ``python -m deflow_trl.train device=cuda compile_update=true
               agent.backend=auto``, then the same command with 2,000 steps: it
               must resume at 1,500; every logged loss finite
=============  ==================================================================  =======

The limits add up to 480 s (8 min on one H100, the issue's budget); they are
estimates made without a GPU: change them with ``--limit STAGE=SECONDS``. It
prints a summary table (stages, the key numbers, the issue's targets) and
writes everything to ``docs/gpu_check_<card>.json`` (``--json`` to change).

Exit codes: 0 every stage passed; 1 a stage failed or ran out of time;
3 no CUDA device (nothing run; one line says so); 2 bad arguments.

On CPU, ``--dry-run`` runs every stage at tiny sizes (``tests/test_gpu_check.py``
does, so the plumbing is tested in CI): tests on CPU, hidden 16, a handful
of steps, ``torch.compile(backend="eager")``.

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run            # on CPU: the plumbing at tiny sizes
    python benchmarks/gpu_check.py --stages sampler,train --limit sampler=300

On this project's device machines (the ``device`` tool; torch, triton and
CUDA are installed there, this package's other dependencies are not and
nothing can be downloaded there), first fetch the wheels here, once:

    bash benchmarks/gpu_check.sh fetch          # → .whl/ (≈ 36 MB), ignored via .git/info/exclude

then one device call (run's ``command`` / ``carry`` / ``timeout_s``):

    command: bash benchmarks/gpu_check.sh       carry: [".whl"]       timeout_s: 600

The wrapper installs the wheels into /tmp/site, runs this script, and copies
``docs/gpu_check_<card>.json`` and the full log into ``$OUT``. Commit the JSON.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3
STAGES = ("tests", "update", "sampler", "update_bench", "seeds", "train")
LIMITS_S = {"tests": 70, "update": 60, "sampler": 110, "update_bench": 85, "seeds": 50, "train": 105}
DRY_LIMITS_S = {"tests": 240, "update": 240, "sampler": 240, "update_bench": 240, "seeds": 240, "train": 300}
# The targets (issue 14).
TARGET_BATCH1_US = 50.0  # batch-1 latency of the 10-step sample with the fused kernels
TARGET_GEMM_FRACTION = 0.5  # batch 4096 vs the card's bf16 GEMM rate
TARGET_COMPILE_SPEEDUP = 2.0  # compiled update vs eager at the reference sizes
# Update check tolerances on the GPU (fp32 reassociation in inductor's fused kernels, 6 Adam steps of lr 3e-4).
UPDATE_LOSS_RTOL, UPDATE_LOSS_ATOL, UPDATE_PARAM_ATOL = 1e-3, 1e-5, 1e-4


# -- small helpers ---------------------------------------------------------------
def card_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` → ``"h100"``: the first model-like token of a GPU name."""
    words = re.findall(r"[a-z]+\d+[a-z0-9]*|\d+[a-z]*", name.lower().replace("nvidia", "").replace("geforce", ""))
    words = [w for w in words if not re.fullmatch(r"\d+gb|hbm\d*[a-z]*|pcie|sxm\d*|nvl", w)]
    return words[0] if words else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def parse_limits(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        stage, sep, value = item.partition("=")
        if not sep or stage not in STAGES:
            raise ValueError(f"--limit takes STAGE=SECONDS with STAGE one of {STAGES}, got {item!r}")
        try:
            out[stage] = float(value)
        except ValueError:
            raise ValueError(f"--limit {item!r}: {value!r} is not a number of seconds") from None
    return out


def run_cmd(cmd: list[str], env: dict, timeout: float, log, cwd=ROOT) -> tuple[int | None, str, float]:
    """Runs ``cmd`` in its own process group; returns ``(returncode or None on
    timeout, output, seconds)``. On timeout the whole group is killed."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    log.write(out or "")
    log.flush()
    return code, out or "", time.perf_counter() - t0


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pytest_counts(output: str) -> tuple[dict[str, int], list[str]]:
    """``({"passed": 12, "failed": 1, ...}, [failed test ids])`` from pytest's ``-q -rf`` output."""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)\b", output)}
    return counts, re.findall(r"^FAILED (\S+)", output, re.M)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- stage: the compiled update against eager (runs in a subprocess) -----------
def update_check(device_name: str, dry_run: bool, json_path: str) -> int:
    """Eager vs compiled vs compiled + CUDA graphs from one init, batches and RNG.

    Writes per-mode max relative loss differences and max absolute parameter
    differences against eager to ``json_path``; returns 0 when all are within
    the tolerances above, 1 otherwise.
    """
    import torch
    from tensordict import TensorDict
    from torchrl.objectives import SoftUpdate

    from deflow_trl import make_deflow
    from deflow_trl.update import Updater

    device = torch.device(device_name)
    obs_dim, act_dim = 28, 5
    hidden, num_steps, batch_size, steps = ((16,), 2, 16, 3) if dry_run else ((128, 128), 4, 256, 6)
    g = torch.Generator().manual_seed(0)
    batches = [
        TensorDict({
            "observation": torch.randn(batch_size, obs_dim, generator=g),
            "action": torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
            "next": {"observation": torch.randn(batch_size, obs_dim, generator=g),
                     "reward": -torch.rand(batch_size, 1, generator=g),
                     "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                     "terminated": torch.rand(batch_size, 1, generator=g) < 0.05},
        }, batch_size=[batch_size]).to(device)
        for _ in range(steps)
    ]
    # fallback_random: inductor draws noise through aten, from the same generator as eager (deflow_trl/update.py).
    compile_options = {"backend": "eager"} if dry_run else {"options": {"fallback_random": True}}
    modes = {"eager": dict(compile=False), "compiled": dict(compile=True, cudagraphs=False)}
    if device.type == "cuda":
        modes["compiled + CUDA graphs"] = dict(compile=True, cudagraphs=True)
    results, states = {}, {}
    for mode, kw in modes.items():
        torch.manual_seed(0)
        _, loss = make_deflow(obs_dim, act_dim, hidden_sizes=hidden, num_flow_steps=num_steps, device=device)
        optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        updater = Updater(loss, optim, SoftUpdate(loss, tau=0.005),
                          compile_options=compile_options if kw["compile"] else None, **kw)
        torch.manual_seed(1)
        t0 = time.perf_counter()
        outs = [updater(b) for b in batches]
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[mode] = {"outputs": [o.to("cpu") for o in outs], "seconds": time.perf_counter() - t0}
        states[mode] = {k: v.detach().float().cpu().clone() for k, v in loss.state_dict().items()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()}
    report = {"device": str(device), "hidden": hidden, "K": num_steps, "batch": batch_size, "steps": steps,
              "tolerances": {"loss_rtol": UPDATE_LOSS_RTOL, "loss_atol": UPDATE_LOSS_ATOL,
                             "param_atol": UPDATE_PARAM_ATOL},
              "modes": {}}
    ok = True
    ref_out, ref_state = results["eager"]["outputs"], states["eager"]
    for mode in modes:
        worst_loss, worst_key, finite = 0.0, None, True
        for a, b in zip(results[mode]["outputs"], ref_out):
            for key in b.keys():
                x, y = a[key].float(), b[key].float()
                finite &= bool(torch.isfinite(x).all())
                excess = ((x - y).abs() - UPDATE_LOSS_ATOL).clamp_min(0) / y.abs().clamp_min(1e-12)
                if excess.max().item() > worst_loss:
                    worst_loss, worst_key = excess.max().item(), key
        worst_param, worst_name = 0.0, None
        for name, ref in ref_state.items():
            diff = (states[mode][name] - ref).abs().max().item() if ref.numel() else 0.0
            if diff > worst_param:
                worst_param, worst_name = diff, name
        passed = finite and worst_loss <= UPDATE_LOSS_RTOL and worst_param <= UPDATE_PARAM_ATOL
        ok &= passed
        report["modes"][mode] = {"passed": passed, "finite": finite, "seconds": results[mode]["seconds"],
                                 "max_loss_rel_diff": worst_loss, "worst_loss_key": worst_key,
                                 "max_param_abs_diff": worst_param, "worst_param": worst_name}
        print(f"  {mode:24s} {'ok' if passed else 'MISMATCH'}: loss rel diff {worst_loss:.1e} ({worst_key}), "
              f"param abs diff {worst_param:.1e} ({worst_name}), {results[mode]['seconds']:.1f} s", flush=True)
    report["passed"] = ok
    Path(json_path).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


# -- stage: the train app, then its resume --------------------------------------
def read_train_metrics(run_dir: Path) -> dict:
    """Every ``train/*`` scalar the run logged: ``{name: [(step, value), ...]}``
    (TorchRL's CSVLogger: ``metrics/scalars/train/<name>.csv``, rows ``step,value``)."""
    out = {}
    for path in sorted(glob.glob(str(run_dir / "metrics" / "scalars" / "train" / "*.csv"))):
        with open(path) as f:
            rows = [(int(float(r[0])), float(r[1])) for r in csv.reader(f) if len(r) >= 2 and r[0] != "step"]
        out[Path(path).stem] = rows
    return out


def train_stage(py: str, env: dict, work: Path, dry_run: bool, limit: float, log) -> dict:
    """Dataset → run 1 (``first`` steps) → run 2 (``total`` steps, must resume)."""
    t0 = time.perf_counter()
    left = lambda: limit - (time.perf_counter() - t0)
    data_dir, run_dir = work / "data", work / "run"
    first, total = (20, 30) if dry_run else (1500, 2000)
    episodes, length, workers = (2, 60, 1) if dry_run else (20, 1001, min(16, os.cpu_count() or 1))
    info: dict = {"steps_first_run": first, "steps_total": total, "episodes": episodes, "episode_length": length}
    code, out, sec = run_cmd([py, "-m", "deflow_trl.data.generate", "--env", "cube-single-play-v0",
                              "--episodes", str(episodes), "--episode-length", str(length), "--workers", str(workers),
                              "--dataset-dir", str(data_dir), "--no-progress", "--force"], env, left(), log)
    info["generate_s"] = sec
    if code != 0:
        return {**info, "passed": False, "detail": "dataset generation " + ("timed out" if code is None else "failed"),
                "tail": tail(out)}
    overrides = [f"data.dataset_dir={data_dir}", f"hydra.run.dir={run_dir}", "progress=false",
                 f"eval_interval={first}", "log_interval=10" if dry_run else "log_interval=100",
                 f"save_interval={first // 3}", "seed=0"]
    if dry_run:
        overrides += ["device=cpu", "compile_update=false", "agent.backend=eager", "agent.hidden_sizes=[16,16]",
                      "eval_episodes=1", "batch_size=32"]
    else:
        overrides += ["device=cuda", "compile_update=true", "agent.backend=auto", "eval_episodes=3"]
    runs = []
    for steps in (first, total):
        code, out, sec = run_cmd([py, "-m", "deflow_trl.train", f"offline_steps={steps}", *overrides], env, left(), log)
        runs.append({"offline_steps": steps, "returncode": code, "seconds": sec})
        if code != 0:
            return {**info, "runs": runs, "passed": False,
                    "detail": f"train run to {steps} steps " + ("timed out" if code is None else "failed"),
                    "tail": tail(out)}
    info["runs"] = runs
    resumed = re.search(r"resumed from \S+ at step (\d+)", out)
    info["resumed_at"] = int(resumed.group(1)) if resumed else None
    success = re.search(r"success rate ([\d.]+)% at step (\d+)", out)
    info["final_success_rate_percent"] = float(success.group(1)) if success else None
    metrics = read_train_metrics(run_dir)
    losses = {k: v for k, v in metrics.items() if k.startswith("loss_")}
    info["loss_keys"] = sorted(losses)
    info["last_logged_step"] = max((s for rows in metrics.values() for s, _ in rows), default=None)
    info["nonfinite"] = sorted(k for k, rows in losses.items() if not all(math.isfinite(v) for _, v in rows))
    info["last_losses"] = {k: rows[-1][1] for k, rows in losses.items() if rows}
    if runs[1]["seconds"] > 0:
        info["steps_per_s_second_run_incl_startup"] = (total - first) / runs[1]["seconds"]
    problems = []
    if info["resumed_at"] != first:
        problems.append(f"second run did not resume at step {first} (found {info['resumed_at']})")
    if not losses:
        problems.append("no train/loss_* metrics were logged")
    if info["nonfinite"]:
        problems.append(f"non-finite losses: {info['nonfinite']}")
    if info["last_logged_step"] != total:
        problems.append(f"last logged step {info['last_logged_step']} != {total}")
    info["passed"] = not problems
    info["detail"] = "; ".join(problems) or (f"resumed at {first}, finite losses to {total}, "
                                             f"success {info['final_success_rate_percent']}%")
    return info


# -- the targets ---------------------------------------------------------
def evaluate_targets(sampler: dict | None, update_bench: dict | None) -> dict:
    """The issue's three targets from the benchmark JSONs (``None`` = not measured)."""
    targets = {}
    rows = (sampler or {}).get("rows", [])
    fused_b1 = [r["latency_ms"] * 1e3 for r in rows if r["backend"].startswith("triton") and r["batch"] == 1]
    best = min(fused_b1) if fused_b1 else None
    targets["batch1_latency_us"] = {"target": f"<= {TARGET_BATCH1_US:g} us (fused kernels)", "value": best,
                                    "met": None if best is None else best <= TARGET_BATCH1_US}
    gemm = (sampler or {}).get("gemm_gflops", {})
    bf16_rows = [r for r in rows if r["backend"].startswith("triton-bf16") and r["batch"] == 4096]
    width = ((sampler or {}).get("hidden") or [512])[0]
    same = gemm.get(f"bf16 4096x{width}x{width}")
    peak = max((v for k, v in gemm.items() if k.startswith("bf16 ")), default=None)
    value = bf16_rows[0]["gflops"] if bf16_rows else None
    targets["batch4096_vs_bf16_gemm"] = {
        "target": f">= {100 * TARGET_GEMM_FRACTION:g}% of the card's bf16 GEMM rate (triton-bf16)",
        "gflops": value, "bf16_gemm_same_shape_gflops": same, "bf16_gemm_best_gflops": peak,
        "fraction_same_shape": value / same if value and same else None,
        "fraction_best": value / peak if value and peak else None,
        "met": None if not (value and peak) else value / peak >= TARGET_GEMM_FRACTION,
    }
    ub = {r["mode"]: r["ms_per_update"] for r in (update_bench or {}).get("rows", []) if r.get("config") == "reference"}
    compiled = min((v for k, v in ub.items() if k.startswith("compiled") and "bf16" not in k), default=None)
    speedup = ub["eager"] / compiled if compiled and "eager" in ub else None
    targets["compiled_update_speedup"] = {"target": f">= {TARGET_COMPILE_SPEEDUP:g}x eager (reference sizes)",
                                          "eager_ms": ub.get("eager"), "compiled_ms": compiled, "value": speedup,
                                          "met": None if speedup is None else speedup >= TARGET_COMPILE_SPEEDUP}
    return targets


# -- the run -----------------------------------------------------------------------
def environment(device) -> dict:
    import torch

    from deflow_trl.hardware import cpu_description

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "cpu": cpu_description()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    return env


def print_summary(report: dict) -> None:
    print("\n| stage | status | seconds | limit s | detail |\n| --- | --- | ---: | ---: | --- |")
    for name, st in report["stages"].items():
        detail = str(st.get("detail", "")).replace("\n", " ")[:110]
        print(f"| {name} | {st['status']} | {st['seconds']:.0f} | {st['limit_s']:.0f} | {detail} |")
    rows = (report.get("sampler") or {}).get("rows", [])
    if rows:
        print("\nsampler latency (ms) by backend and batch:")
        batches = sorted({r["batch"] for r in rows})
        print("| backend | " + " | ".join(f"b={b}" for b in batches) + " |\n| --- |" + " ---: |" * len(batches))
        for backend in dict.fromkeys(r["backend"] for r in rows):
            cells = {r["batch"]: r["latency_ms"] for r in rows if r["backend"] == backend}
            print(f"| {backend} | " + " | ".join(f"{cells[b]:.4g}" if b in cells else "" for b in batches) + " |")
    ub = (report.get("update_bench") or {}).get("rows", [])
    if ub:
        print("\nupdate step (ms, median):")
        for r in ub:
            print(f"  {r['config']:10s} {r['mode']:34s} {r['ms_per_update']:9.3f} ms (first call {r['first_call_s']:.1f} s)")
    print("\ntargets (issue 14):")
    for name, t in report["targets"].items():
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        value = t.get("value", t.get("fraction_best"))
        print(f"  {name:28s} {met:12s} value {value if value is None else round(value, 4)}  ({t['target']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Exit codes: 0 passed, 1 a stage failed, 3 no CUDA device.")
    parser.add_argument("--dry-run", "--cpu", action="store_true", dest="dry_run",
                        help="every stage at tiny sizes on CPU (tests the plumbing; no GPU needed)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's time limit")
    parser.add_argument("--json", default=None, help="result file (default docs/gpu_check_<card>.json; dry run: in --work-dir)")
    parser.add_argument("--work-dir", default=None, help="logs, stage JSONs, dataset and run (default: a temp dir)")
    parser.add_argument("--log", default=None, help="full log of every subprocess (default <work-dir>/gpu_check.log)")
    parser.add_argument("--internal-update-check", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.internal_update_check:
        return update_check(args.device, args.dry_run, args.internal_update_check)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        parser.error(f"unknown stage(s) {bad}; choose from {STAGES}")
    try:
        limits = {**(DRY_LIMITS_S if args.dry_run else LIMITS_S), **parse_limits(args.limit)}
    except ValueError as err:
        parser.error(str(err))

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              "torch.cuda.is_available() is False): nothing run; use --dry-run to test the plumbing on CPU")
        return EXIT_NO_CUDA
    device = torch.device("cpu" if args.dry_run else "cuda")
    env_info = environment(device)
    card = "cpu_dryrun" if args.dry_run else card_slug(env_info["gpu"])
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (work if args.dry_run else ROOT / "docs") / f"gpu_check_{card}.json"
    log_path = Path(args.log) if args.log else work / "gpu_check.log"
    py = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
               TORCHINDUCTOR_CACHE_DIR=str(work / "inductor_cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("TRITON_INTERPRET", None)
    print(f"gpu_check on {env_info.get('gpu', 'CPU (dry run)')}: stages {stages}, work dir {work}", flush=True)
    print(f"CPU: {env_info['cpu']}", flush=True)

    report: dict = {"card": card, "dry_run": args.dry_run, "environment": env_info, "command": sys.argv,
                    "limits_s": limits, "stages": {}}
    t_all = time.perf_counter()
    with open(log_path, "a") as log:
        for stage in stages:
            limit = limits[stage]
            print(f"\n== {stage} (limit {limit:.0f} s)", flush=True)
            st: dict = {"limit_s": limit}
            t0 = time.perf_counter()
            if stage == "tests":
                stage_env = dict(env, DEFLOW_TEST_DEVICE=str(device), DEFLOW_TRITON_AUTOTUNE="0")
                cmd = [py, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "tests/test_kernels.py",
                       "tests/test_backends.py"]
                if args.dry_run:  # CPU: the device-parametrised tests only (the interpreter tests are CI's)
                    cmd = [py, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "tests/test_backends.py",
                           "-k", "on_device or native"]
                code, out, _ = run_cmd(cmd, stage_env, limit, log)
                counts, failed = pytest_counts(out)
                st.update(returncode=code, counts=counts, failed=failed,
                          detail=", ".join(f"{n} {k}" for k, n in counts.items()) or tail(out, 2))
                ok = code == 0
            elif stage == "update":
                path = work / "update_check.json"
                cmd = [py, str(Path(__file__).resolve()), "--internal-update-check", str(path), "--device", str(device)]
                code, out, _ = run_cmd(cmd + (["--dry-run"] if args.dry_run else []), env, limit, log)
                result = read_json(path) if code is not None else None
                report["update_check"] = result
                ok = code == 0 and bool(result and result.get("passed"))
                st.update(returncode=code, detail="; ".join(
                    f"{m}: {'ok' if r['passed'] else 'MISMATCH'} (loss {r['max_loss_rel_diff']:.0e}, "
                    f"param {r['max_param_abs_diff']:.0e})" for m, r in (result or {}).get("modes", {}).items())
                    or tail(out, 3))
            elif stage == "sampler":
                path = work / "sampler.json"
                cmd = [py, "benchmarks/sampler_throughput.py", "--device", str(device), "--json", str(path)]
                cmd += (["--quick", "--hidden", "16", "16", "--batches", "1", "4", "--backends", "eager", "eager-bf16"]
                        if args.dry_run else ["--batches", "1", "256", "4096"])
                code, out, _ = run_cmd(cmd, env, limit, log)
                result = read_json(path)  # rewritten after every backend: partial rows survive a timeout
                report["sampler"] = result
                ok = code == 0 and bool(result and result.get("complete"))
                st.update(returncode=code, rows=len((result or {}).get("rows", [])),
                          detail=f"{len((result or {}).get('rows', []))} rows" + ("" if ok else ": " + tail(out, 3)))
            elif stage == "update_bench":
                path = work / "update_bench.json"
                cmd = [py, "benchmarks/update_throughput.py", "--device", str(device), "--json", str(path)]
                cmd += (["--quick", "--config", "small", "--repeats", "2", "--no-compile"] if args.dry_run
                        else ["--quick", "--config", "reference", "--repeats", "5"])
                code, out, _ = run_cmd(cmd, env, limit, log)
                result = read_json(path) if code == 0 else None
                report["update_bench"] = result
                ok = code == 0 and result is not None
                st.update(returncode=code, detail=(", ".join(f"{r['mode']} {r['ms_per_update']:.3g} ms"
                                                             for r in result["rows"]) if ok else tail(out, 3)))
            elif stage == "seeds":
                path = work / "seeds.json"
                cmd = [py, "benchmarks/seed_throughput.py", "--device", str(device), "--json", str(path)]
                cmd += (["--config", "tiny", "--seeds", "1", "2", "--steps", "1", "--repeats", "1", "--warmup", "1",
                         "--no-processes"] if args.dry_run else ["--config", "reference", "--seeds", "1", "2", "4", "8"])
                code, out, _ = run_cmd(cmd, env, limit, log)
                result = read_json(path) if code == 0 else None
                report["seeds"] = result
                ok = code == 0 and result is not None
                st.update(returncode=code, detail=(", ".join(
                    f"G={r['seeds']} {r['group_seed_updates_per_s']:.3g} vs {r['lone_seed_updates_per_s']:.3g}/s"
                    for r in result["rows"]) if ok else tail(out, 3)))
            else:  # train
                result = train_stage(py, env, work / "train", args.dry_run, limit, log)
                report["train"] = result
                ok = result["passed"]
                st.update(detail=result["detail"] + ("" if ok else " | " + result.get("tail", "")))
            st["seconds"] = time.perf_counter() - t0
            timed_out = st.get("returncode", 0) is None or ("timed out" in str(st.get("detail")))
            st["status"] = "passed" if ok else ("TIMEOUT" if timed_out else "FAILED")
            report["stages"][stage] = st
            print(f"   {st['status']} in {st['seconds']:.0f} s: {st['detail']}", flush=True)

    report["total_s"] = time.perf_counter() - t_all
    report["targets"] = evaluate_targets(report.get("sampler"), report.get("update_bench"))
    report["passed"] = all(s["status"] == "passed" for s in report["stages"].values())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str))
    print_summary(report)
    print(f"\ntotal {report['total_s']:.0f} s; {'all stages passed' if report['passed'] else 'SOME STAGES FAILED'}; "
          f"JSON: {json_path}; log: {log_path}")
    return EXIT_OK if report["passed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
