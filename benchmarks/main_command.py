"""Times the README's main command as a new user meets it, and reports what it learnt.

Clones this repository's HEAD into a scratch directory, makes a fresh venv, installs the
``app`` extra, then runs ``python -m deflow_trl.train +experiment=quick`` with a fresh
``HOME`` (so the quick dataset is regenerated) and a fresh inductor cache (so the compile is
cold). Prints the machine line, each phase's wall time, the success curve and the per-phase
numbers the run logged (``time/steps_per_s``, ``time/eval_seconds``), and writes them as JSON.

    python benchmarks/main_command.py --json main_command.json          # the real measurement (≈ 12 min on a Zen 3)
    python benchmarks/main_command.py --no-venv --override offline_steps=20 eval_interval=10 \\
        eval_episodes=1 compile_update=false 'agent.hidden_sizes=[32,32]' data.generate_episodes=2   # plumbing only

Compare numbers only within one machine class; the JSON names the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--workdir", help="scratch directory (default: a new temporary one, kept for inspection)")
    parser.add_argument("--no-venv", action="store_true", help="run with this interpreter (no clone install): plumbing")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for the command")
    args = parser.parse_args()

    sys.path.insert(0, ROOT)
    from deflow_trl.app.plot import read_scalar
    from deflow_trl.hardware import cpu_description

    def scalar(name: str) -> list[tuple[int, float]]:
        steps, values = read_scalar(run_dir, name)
        return list(zip(steps.tolist(), values.tolist()))

    work = args.workdir or tempfile.mkdtemp(prefix="deflow_main_command_")
    clone, home = os.path.join(work, "clone"), os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    print(f"scratch directory: {work}", flush=True)  # printed, not stored: no machine paths in the JSON
    result = {"cpu": cpu_description(), "overrides": args.override}
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    result["commit"] = subprocess.run(["git", "-C", clone, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    python = sys.executable
    if not args.no_venv:
        subprocess.run([sys.executable, "-m", "venv", os.path.join(clone, ".venv")], check=True)
        python = os.path.join(clone, ".venv", "bin", "python")
        seconds, done = timed([python, "-m", "pip", "install", "-q", "torch==2.13.0", "-e", ".[app]"], cwd=clone)
        if done.returncode:
            sys.exit(f"install failed:\n{done.stderr[-3000:]}")
        result["install_s"] = round(seconds, 1)
    env = {**os.environ, "HOME": home, "TORCHINDUCTOR_CACHE_DIR": os.path.join(home, "inductor")}
    env.pop("OMP_NUM_THREADS", None)  # the command as a user runs it: torch picks its threads
    seconds, done = timed([python, "-m", "deflow_trl.train", "+experiment=quick", *args.override], cwd=clone, env=env)
    if done.returncode:
        sys.exit(f"the main command failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result["command_s"] = round(seconds, 1)
    line = [s for s in done.stdout.splitlines() if s.startswith("[deflow_trl]")]
    last = line[-1] if line else ""
    run_dir = re.search(r"Curve: (\S+)/learning_curve\.png", last)
    result["last_line"] = last.replace(clone + os.sep, "") or None  # run directory relative to the clone
    if run_dir is None:
        sys.exit(f"no result line in the output:\n{done.stdout[-2000:]}")
    run_dir = run_dir.group(1)
    log = done.stderr + done.stdout  # the app's console log (data generation precedes the run's train.log)
    stamps = re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]\[[^]]+\]\[INFO\] - (.*)", log)
    regen = [t for t, m in stamps if "regenerating" in m]
    cached = [t for t, m in stamps if "cached" in m or "using the cache" in m]
    if regen and cached:
        parse = lambda t: time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S"))  # noqa: E731
        result["data_s"] = parse(cached[0]) - parse(regen[0])
    result["success_pct"] = {step: 100 * v for step, v in scalar("eval/success_rate")}
    result["eval_s"] = {step: round(v, 1) for step, v in scalar("time/eval_seconds")}
    rates = sorted(v for _, v in scalar("time/steps_per_s"))
    result["steps_per_s_median"] = round(rates[len(rates) // 2], 1) if rates else None

    print(f"machine: {result['cpu']}\ncommit {result['commit'][:10]}, overrides {args.override or 'none'}\n")
    print("| phase | seconds |\n| --- | ---: |")
    for key in ("install_s", "command_s", "data_s"):
        if key in result:
            print(f"| {key[:-2]} | {result[key]:.0f} |")
    print(f"| training steps/s (median of log intervals) | {result['steps_per_s_median']} |")
    print("\n| step | success % | evaluation s |\n| ---: | ---: | ---: |")
    for step, pct in result["success_pct"].items():
        print(f"| {step} | {pct:.0f} | {result['eval_s'].get(step, float('nan')):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
