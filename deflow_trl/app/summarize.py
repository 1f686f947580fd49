"""Turn runs' evaluation CSVs into the benchmark protocol's numbers.

    python -m deflow_trl.summarize runs/paper [more run or sweep dirs...] [--json out.json]
        [--plot curves.png] [--bar-plot suites.png]

What it computes (the OGBench protocol of the FQL and DeFlow papers):

1. **Per run**: the mean of the success rates of its last three evaluations
   (with the paper's protocol, ``+experiment=paper``: 800K, 900K and 1M steps,
   50 episodes each), in percent. Only *complete* runs are scored: a run whose
   evaluations stop before its configured last step, that misses an
   evaluation its config asks for, that has a ``FAILED`` file (a failure
   marker: its first line is the reason) or an ``[ERROR]`` line in its log
   while its evaluations are incomplete, or whose config
   cannot be read, is listed with the reason and left out of every average.
   A job its checks refused (a bad config, missing data) leaves only the
   ``FAILED`` marker in its directory: it is listed as ``failed`` too.
2. **Per (agent, dataset)**: runs are grouped by seed. Several runs of one seed
   (the same seed launched twice, in two sweep directories) are *one* seed: their
   scores are averaged into that seed's score and a warning names them. Then
   mean ± std over seeds (population std, ``ddof=0``, as numpy's default).
3. **Per (agent, suite)** (the papers' headline number): for each seed, the
   average of its scores over the suite's tasks; then mean ± std (``ddof=0``)
   over the seeds. A seed is counted only if it has a score for every task
   present for that agent and suite (a seed missing one is named in a warning
   and left out); the row says how many tasks it averages, and the published
   DeFlow and FQL numbers (``deflow_trl.app.published``) stand beside it. A row is
   marked ``paper`` only when it follows the published protocol: 5 tasks, 1M
   offline steps, no online steps, an evaluation every 100K steps, 50 episodes.

Runs are found recursively: any directory holding ``.hydra/config.yaml``,
``metrics/scalars`` or a ``FAILED`` marker (``.submitit`` folders are skipped).
Agent, suite, task, dataset, seed and the step budget come from the run's
``.hydra/config.yaml``. Run directories are reported relative to the directory
given (several: to their common parent), so a summary names no machine's paths.
Output: a table per (agent, dataset), a table per (agent, suite), a table of the
runs not averaged (failed, unfinished, unknown) with the reason, warnings on
stderr; ``--json`` writes all of it (runs, rows, suites, warnings),
``--plot`` learning curves (mean ± std over seeds per (agent, dataset)),
``--bar-plot`` the per-suite numbers beside the published ones.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m deflow_trl.summarize` without the app extra: one line, not a traceback
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.summarize")

import argparse
import json
import os
import socket
import sys
from collections import defaultdict

import numpy as np

from deflow_trl.app.plot import read_scalar
from deflow_trl.app.published import PUBLISHED, SOURCE
from deflow_trl.app.sweep_report import FAILED_MARKER, failure_reason  # a failed job's marker (first line: the reason)

LAST_EVALS = 3

PAPER_PROTOCOL = {"offline_steps": 1_000_000, "online_steps": 0, "eval_interval": 100_000, "eval_episodes": 50}
PAPER_TASKS = (1, 2, 3, 4, 5)


class SummaryError(ValueError):
    """Nothing to summarize, or an output that cannot be written; one line for the user."""


# ----------------------------------------------------------------------------- runs
def find_run_dirs(root: str) -> list[str]:
    """Every run directory under ``root`` (itself included): those holding
    ``.hydra/config.yaml``, ``metrics/scalars`` or a ``FAILED`` marker (a sweep job
    refused before it wrote its record leaves only that). Hidden folders
    (``.submitit``, ``.hydra``) are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if (os.path.isfile(os.path.join(dirpath, ".hydra", "config.yaml"))
                or os.path.isdir(os.path.join(dirpath, "metrics", "scalars")) or FAILED_MARKER in filenames):
            found.append(dirpath)
            dirnames[:] = []  # a run directory holds no other run
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


def expected_eval_steps(total_steps: int, eval_interval: int) -> list[int]:
    """The steps at which the app evaluates: every ``eval_interval`` and at the last step.

    >>> expected_eval_steps(1_000_000, 100_000)[-3:]
    [800000, 900000, 1000000]
    >>> expected_eval_steps(7, 3)
    [3, 6, 7]
    """
    steps = list(range(eval_interval, total_steps + 1, eval_interval))
    if not steps or steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def _failure_marker(run_dir: str) -> str | None:
    """``crashed (FAILED: <its first line>)`` when the run directory holds a ``FAILED`` marker, else None."""
    reason = failure_reason(run_dir)
    if reason is None:
        return None
    return f"crashed ({FAILED_MARKER}: {reason})" if reason else f"crashed ({FAILED_MARKER} marker)"


def _refusal_marker(run_dir: str) -> str | None:
    """For a run directory without a readable config: ``refused (FAILED: <its first line>)`` when it holds a
    ``FAILED`` marker and no ``.hydra/config.yaml`` (the app writes its record only once every check passed,
    so such a job never started), ``crashed (...)`` when the config is there but unreadable, else None."""
    if os.path.isfile(os.path.join(run_dir, ".hydra", "config.yaml")):
        return _failure_marker(run_dir)
    reason = failure_reason(run_dir)
    if reason is None:
        return None
    return f"refused ({FAILED_MARKER}: {reason})" if reason else f"refused ({FAILED_MARKER} marker)"


def _logged_error(run_dir: str) -> str | None:
    """``crashed (<message>)`` from the last ``[ERROR]`` line of the run's Hydra job log (``*.log``), else None.
    Used only for runs whose evaluations are incomplete (a later successful relaunch keeps old lines)."""
    errors = []
    for name in sorted(os.listdir(run_dir)):
        if name.endswith(".log"):
            try:
                with open(os.path.join(run_dir, name), errors="replace") as f:
                    errors += [line.split("] - ", 1)[-1].strip() for line in f if "][ERROR] - " in line]
            except OSError:
                pass
    return f"crashed ({errors[-1]})" if errors else None


def _still_running(run_dir: str) -> str | None:
    """``"still running (pid N on HOST)"`` when the app's run-directory lock (``<run_dir>/.lock``, which
    names its holder while held and is emptied on release) names a live process on this host, or another
    host; None when the lock is empty, missing, or its holder here is gone (killed runs leave it filled).
    The lock is only read, never taken: summarize must not make a starting job fail."""
    try:
        with open(os.path.join(run_dir, ".lock"), errors="replace") as f:
            holder = dict(line.strip().split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
    try:
        pid = int(holder.get("pid", ""))
    except ValueError:
        return None
    host = holder.get("host", "?")
    if host != socket.gethostname():
        return f"maybe still running (pid {pid} on {host})"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"still running (pid {pid} on {host})"


def _read_config(run_dir: str) -> dict:
    """The fields of the run's ``.hydra/config.yaml`` that summarize needs; raises ValueError naming what is missing."""
    from omegaconf import OmegaConf

    path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(path):
        raise ValueError("no .hydra/config.yaml: cannot tell its agent, task and seed")
    try:
        cfg = OmegaConf.load(path)
        out = {
            "agent": str(cfg.agent.name), "suite": str(cfg.env.name), "task": int(cfg.task),
            "dataset": str(cfg.dataset), "seed": int(cfg.seed),
            "offline_steps": int(cfg.offline_steps), "online_steps": int(cfg.get("online_steps", 0)),
            "eval_interval": int(cfg.eval_interval), "eval_episodes": int(cfg.eval_episodes),
        }
    except Exception as err:  # a broken or foreign config: say which, do not guess
        raise ValueError(f"unreadable .hydra/config.yaml ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return out


def inspect_run(run_dir: str) -> dict:
    """One run's record: its config fields, evaluations and ``status``.

    ``status`` is ``"complete"`` (every configured evaluation present: ``score``
    is the mean of the last three, in %), ``"failed"`` (a ``FAILED`` marker or an
    ``[ERROR]`` log line; a job refused before it wrote its record has only the
    marker, and no config fields), ``"unfinished"`` (evaluations stop early or miss
    one: killed, preempted, or still running) or ``"unknown"`` (no readable config).
    ``reason`` says why for all but complete runs.
    """
    steps, success = read_scalar(run_dir, "eval/success_rate")
    record: dict = {"run_dir": run_dir, "status": "complete", "reason": None, "score": None,
                    "evals": int(len(steps)), "last_eval_step": int(steps[-1]) if len(steps) else None}
    try:
        record.update(_read_config(run_dir))
    except ValueError as err:
        refused = _refusal_marker(run_dir)
        if refused is not None:
            record.update(status="failed", reason=refused)
        else:
            record.update(status="unknown", reason=str(err))
        return record
    total = record["offline_steps"] + record["online_steps"]
    expected = expected_eval_steps(total, record["eval_interval"])
    missing = sorted(set(expected) - set(steps.tolist()))
    record.update(total_steps=total, expected_evals=len(expected))
    failure = _failure_marker(run_dir)
    if failure is None and (not len(steps) or record["last_eval_step"] < total or missing):
        failure = _logged_error(run_dir)
    if failure is not None:
        record.update(status="failed", reason=failure)
    elif not len(steps) or record["last_eval_step"] < total:
        why = _still_running(run_dir) or "stopped early (killed, crashed or preempted; relaunch it to resume)"
        where = (f"no evaluation yet (first due at step {expected[0]} of {total})" if not len(steps) else
                 f"last evaluation at step {record['last_eval_step']} of {total} "
                 f"({len(steps)} of {len(expected)} evaluations)")
        record.update(status="unfinished", reason=f"{where}: {why}")
    elif missing:
        record.update(status="unfinished", reason=(
            f"{len(missing)} of {len(expected)} configured evaluations missing (steps {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''})"))
    else:
        record["score"] = float(100 * success[-LAST_EVALS:].mean())
    return record


# ----------------------------------------------------------------------------- aggregation
def _std(values: list[float]) -> float:
    return float(np.std(values)) if values else float("nan")


def seed_scores(runs: list[dict]) -> tuple[dict[tuple[str, str], dict[int, float]], list[str]]:
    """``{(agent, dataset): {seed: score}}`` over complete runs; repeated runs of a seed are averaged into one.
    Also returns the warnings on such duplicates."""
    by_seed: dict[tuple[str, str], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["status"] == "complete":
            by_seed[(r["agent"], r["dataset"])][r["seed"]].append(r)
    out: dict[tuple[str, str], dict[int, float]] = {}
    warnings = []
    for key, seeds in sorted(by_seed.items()):
        out[key] = {}
        for seed, members in sorted(seeds.items()):
            out[key][seed] = float(np.mean([m["score"] for m in members]))
            if len(members) > 1:
                warnings.append(
                    f"{key[0]} on {key[1]}: seed {seed} has {len(members)} runs ("
                    + ", ".join(m["run_dir"] for m in members)
                    + "); counted as one seed (their scores averaged)"
                )
    return out, warnings


def summarize_runs(runs: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """``(rows, suites, warnings)`` from run records (``inspect_run``): see the module docstring."""
    scores, warnings = seed_scores(runs)
    info = {(r["agent"], r["dataset"]): r for r in runs if r["status"] == "complete"}
    rows = []
    for (agent, dataset), per_seed in scores.items():
        members = [r for r in runs if r["status"] == "complete" and (r["agent"], r["dataset"]) == (agent, dataset)]
        values = list(per_seed.values())
        rows.append({
            "agent": agent, "dataset": dataset, "suite": info[(agent, dataset)]["suite"],
            "task": info[(agent, dataset)]["task"], "seeds": len(values), "runs": len(members),
            "mean": float(np.mean(values)), "std": _std(values), "per_seed": values,
            "seed_ids": list(per_seed), "last_step": min(m["last_eval_step"] for m in members),
        })

    suites = []
    by_suite: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        by_suite[(row["agent"], row["suite"])].append(row)
    for (agent, suite), task_rows in sorted(by_suite.items()):
        tasks = sorted(row["task"] for row in task_rows)
        per_task = {row["task"]: dict(zip(row["seed_ids"], row["per_seed"])) for row in task_rows}
        all_seeds = sorted(set().union(*(set(s) for s in per_task.values())))
        counted = [s for s in all_seeds if all(s in per_task[t] for t in tasks)]
        for s in all_seeds:
            if s not in counted:
                lacking = [t for t in tasks if s not in per_task[t]]
                warnings.append(f"{agent} on {suite}: seed {s} has no complete run of task(s) {lacking}; "
                                "left out of the suite average")
        per_seed = [float(np.mean([per_task[t][s] for t in tasks])) for s in counted]
        members = [r for r in runs if r["status"] == "complete" and (r["agent"], r["suite"]) == (agent, suite)]
        deviations = sorted({f"{k}={m[k]}" for m in members for k, v in PAPER_PROTOCOL.items() if m[k] != v})
        if tuple(tasks) != PAPER_TASKS:
            deviations.insert(0, f"tasks {tasks}")
        suites.append({
            "agent": agent, "suite": suite, "tasks": tasks, "seeds": len(counted), "seed_ids": counted,
            "mean": float(np.mean(per_seed)) if per_seed else float("nan"), "std": _std(per_seed),
            "per_seed": per_seed, "paper_protocol": not deviations, "deviations": deviations,
            "published": dict(PUBLISHED.get(suite, {})),
        })
    return rows, suites, warnings


def relative_base(roots: list[str]) -> str:
    """The directory run directories are reported relative to: the root given, or the common parent of several."""
    return os.path.commonpath([os.path.abspath(r) for r in roots])


def summarize(roots: list[str]) -> dict:
    """Everything ``summarize`` reports for these run or sweep directories, as one JSON-able dict:
    ``runs`` (one record per run, see ``inspect_run``; its ``run_dir`` relative to the root given, or to
    the common parent of several roots: ``relative_base``), ``rows`` (per agent and dataset), ``suites``
    (per agent and suite, with the published numbers), ``warnings``, ``source`` (of the published numbers).

    Raises ``SummaryError`` when a root is not a directory, holds no run, or holds no complete run.
    """
    missing = [r for r in roots if not os.path.isdir(r)]
    if missing:
        raise SummaryError(f"not a directory: {', '.join(missing)}")
    base = relative_base(roots)
    dirs = sorted({os.path.abspath(d) for root in roots for d in find_run_dirs(root)})
    if not dirs:
        raise SummaryError(
            f"no run directory under {', '.join(roots)} (a run directory holds .hydra/config.yaml, "
            "metrics/scalars or a FAILED marker); pass a run or sweep directory, e.g. runs/paper"
        )
    runs = [inspect_run(d) for d in dirs]
    for r in runs:  # a summary (and its --json) names no machine's paths
        r["run_dir"] = os.path.relpath(r["run_dir"], base)
    rows, suites, warnings = summarize_runs(runs)
    bad = [r for r in runs if r["status"] != "complete"]
    if bad:
        warnings.insert(0, f"{len(bad)} of {len(runs)} runs not averaged:\n" + "\n".join(
            f"  {r['status']}: {r['run_dir']}: {r['reason']}" for r in bad))
    if not rows:
        raise SummaryError("no complete run to summarize; " + warnings[0])
    return {"source": SOURCE, "last_evals": LAST_EVALS, "runs": runs, "rows": rows, "suites": suites,
            "warnings": warnings}


# ----------------------------------------------------------------------------- output
def format_table(rows: list[dict]) -> str:
    """Markdown table: one row per (agent, dataset)."""
    lines = ["| agent | dataset | success % (mean ± std) | seeds | per seed | steps |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        per_seed = ", ".join(f"{s:.1f}" for s in r["per_seed"])
        lines.append(f"| {r['agent']} | {r['dataset']} | {r['mean']:.1f} ± {r['std']:.1f} | {r['seeds']} | "
                     f"{per_seed} | {r['last_step']} |")
    return "\n".join(lines)


def format_not_averaged(runs: list[dict]) -> str:
    """Markdown table: every run left out of the averages (failed, refused, unfinished, unknown) and why;
    "" when every run is complete."""
    bad = [r for r in runs if r["status"] != "complete"]
    if not bad:
        return ""
    lines = ["| run (not averaged) | status | reason |", "| --- | --- | --- |"]
    lines += [f"| {r['run_dir']} | {r['status']} | {(r['reason'] or '').replace('|', '/')} |" for r in bad]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _json_safe(value):
    """NaN → None (JSON has no NaN), recursively."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_suite_table(suites: list[dict]) -> str:
    """Markdown table: one row per (agent, suite), the task average beside the published numbers."""
    lines = ["| suite | agent | tasks | seeds | success % (task average, mean ± std over seeds) | "
             "DeFlow (paper) | FQL (paper) | protocol |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in suites:
        pub = s["published"]
        value = f"{s['mean']:.1f} ± {s['std']:.1f}" if s["seeds"] else "n/a (no seed has every task)"
        protocol = "paper" if s["paper_protocol"] else "not the paper's: " + ", ".join(s["deviations"])
        lines.append(
            f"| {s['suite']} | {s['agent']} | {','.join(map(str, s['tasks']))} | {s['seeds']} | {value} | "
            f"{_pct(pub.get('DeFlow'))} | {_pct(pub.get('FQL'))} | {protocol} |"
        )
    return "\n".join(lines)


def check_writable(path: str, what: str) -> None:
    """Raises ``SummaryError`` unless a file can be created at ``path`` (checked before any work)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise SummaryError(f"{what} {path} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise SummaryError(f"cannot write {what} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SummaryError(f"cannot write {what} {path}: the directory {parent} is not writable")


def _save_figure(fig, out: str, what: str) -> str:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(out, dpi=100)
    except (OSError, ValueError) as err:  # permissions, disk full, unknown image format
        raise SummaryError(f"cannot write {what} {out}: {err}") from None
    finally:
        plt.close(fig)
    return out


def plot_sweep(roots: list[str], out: str) -> str:
    """Success rate against steps, mean ± std over the runs that reached each step,
    one curve per (agent, dataset); unfinished runs contribute what they have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for d in sorted({d for root in roots for d in find_run_dirs(root)}):
        r = inspect_run(d)
        steps, values = read_scalar(d, "eval/success_rate")
        if "agent" in r and len(steps):  # a run with a readable config
            curves[(r["agent"], r["dataset"])].append((steps, values))
    fig, ax = plt.subplots(figsize=(6, 4))
    for (agent, dataset), runs in sorted(curves.items()):
        common = sorted(set().union(*(set(s.tolist()) for s, _ in runs)))
        at = [[dict(zip(s.tolist(), v))[c] * 100 for s, v in runs if c in set(s.tolist())] for c in common]
        mean = np.array([np.mean(v) for v in at])
        std = np.array([np.std(v) for v in at])
        label = f"{agent}, {dataset} ({len(runs)} runs)" if len(curves) > 1 else f"{agent} ({len(runs)} runs)"
        ax.plot(common, mean, marker="o", label=label)
        ax.fill_between(common, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="step", ylabel="success rate %", ylim=(-2, 102), title=", ".join(sorted({d for _, d in curves})))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, out, "--plot")


def bar_plot(suites: list[dict], out: str) -> str:
    """Per suite: each agent's task average (mean ± std over seeds) beside the published DeFlow and FQL bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({s["suite"] for s in suites})
    agents = sorted({s["agent"] for s in suites})
    series = [(f"{a} (this sweep)", {s["suite"]: (s["mean"], s["std"]) for s in suites if s["agent"] == a}, None)
              for a in agents]
    for method in ("DeFlow", "FQL"):
        series.append((f"{method} (paper)", {n: (PUBLISHED[n][method], 0.0) for n in names if n in PUBLISHED}, "//"))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 4))
    for i, (label, values, hatch) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j, n in enumerate(names) if n in values]
        means = [values[n][0] for n in names if n in values]
        errs = [values[n][1] for n in names if n in values]
        bars = ax.bar(xs, means, width, yerr=errs if hatch is None else None, capsize=3, label=label, hatch=hatch,
                      alpha=0.6 if hatch else 0.9)
        ax.bar_label(bars, labels=[f"{m:.0f}" for m in means], fontsize=7, padding=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="success % (task average)", ylim=(0, 105), title="task average per suite, mean ± std over seeds (paper: 5 tasks × 8 seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, out, "--bar-plot")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--json", default=None, help="also write runs, rows, suites and warnings as JSON here")
    p.add_argument("--plot", default=None, help="also write success-rate curves (mean ± std over seeds) to this PNG")
    p.add_argument("--bar-plot", default=None, help="also write per-suite bars beside the published numbers to this PNG")
    a = p.parse_args(argv)
    try:
        for path, what in ((a.json, "--json"), (a.plot, "--plot"), (a.bar_plot, "--bar-plot")):
            if path:
                check_writable(path, what)
        result = summarize(a.roots)
        for w in result["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(format_table(result["rows"]))
        print()
        print(format_suite_table(result["suites"]))
        print(f"(published: {SOURCE})")
        not_averaged = format_not_averaged(result["runs"])
        if not_averaged:
            base = relative_base(a.roots)
            here = os.path.relpath(base)
            print(f"\nruns not averaged (directories under {base if here.startswith(os.pardir) else here}):")
            print(not_averaged)
        if a.json:
            try:
                with open(a.json, "w") as f:
                    json.dump(_json_safe(result), f, indent=2)
            except OSError as err:
                raise SummaryError(f"cannot write --json {a.json}: {err}") from None
        if a.plot:
            print(f"curves: {plot_sweep(a.roots, a.plot)}")
        if a.bar_plot:
            print(f"bars: {bar_plot(result['suites'], a.bar_plot)}")
    except SummaryError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
