"""summarize: the protocol's numbers from run directories (made here by hand, no training),
crashed / unfinished / duplicate-seed runs, bad inputs, the published table and the paper experiment config."""
import json
import os
import re

import pytest
from omegaconf import OmegaConf

from deflow_trl.app import summarize as S
from deflow_trl.app.published import PUBLISHED, PUBLISHED_OFFLINE_TO_ONLINE, PUBLISHED_VISUAL_MANIPULATION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(root, suite="cube-single-play", task=1, seed=0, agent="deflow", evals=None, total=6, interval=2,
             episodes=1, sub=None):
    """A run directory as the app leaves it: ``.hydra/config.yaml`` and the eval CSV (success rates in [0, 1])."""
    run_dir = os.path.join(str(root), sub or f"{suite}/{agent}/task{task}/seed{seed}")
    os.makedirs(os.path.join(run_dir, ".hydra"))
    cfg = {"env": {"name": suite}, "agent": {"name": agent}, "task": task, "seed": seed,
           "dataset": "${env.name}-singletask-task${task}-v0", "offline_steps": total, "online_steps": 0,
           "eval_interval": interval, "eval_episodes": episodes}
    OmegaConf.save(OmegaConf.create(cfg), os.path.join(run_dir, ".hydra", "config.yaml"))
    os.makedirs(os.path.join(run_dir, "metrics", "scalars", "eval"))
    with open(os.path.join(run_dir, "metrics", "scalars", "eval", "success_rate.csv"), "w") as f:
        for step, value in (evals or {}).items():
            f.write(f"{step},{value}\n")
    return run_dir


def full(*values, interval=2):
    """Evaluations at interval, 2*interval, ... with these success rates."""
    return {interval * (i + 1): v for i, v in enumerate(values)}


def test_run_score_is_the_mean_of_the_last_three_evaluations(tmp_path):
    d = make_run(tmp_path, evals=full(0.0, 0.1, 0.2, 0.4, 0.6), total=10)
    r = S.inspect_run(d)
    assert r["status"] == "complete" and r["score"] == pytest.approx(40.0)  # (0.2 + 0.4 + 0.6) / 3
    assert (r["agent"], r["suite"], r["task"], r["seed"]) == ("deflow", "cube-single-play", 1, 0)
    assert r["dataset"] == "cube-single-play-singletask-task1-v0"
    assert S.expected_eval_steps(1_000_000, 100_000) == list(range(100_000, 1_000_001, 100_000))
    assert S.expected_eval_steps(7, 3) == [3, 6, 7]


def test_suite_average_is_per_seed_over_tasks_then_mean_and_std_over_seeds(tmp_path):
    # seed 0: tasks 1, 2 score 10, 30 -> 20; seed 1: 50, 70 -> 60. Suite: 40 ± 20 (population std).
    for task, seed, v in [(1, 0, 0.1), (2, 0, 0.3), (1, 1, 0.5), (2, 1, 0.7)]:
        make_run(tmp_path, task=task, seed=seed, evals=full(v, v, v))
    out = S.summarize([str(tmp_path)])
    rows = {r["dataset"]: r for r in out["rows"]}
    assert rows["cube-single-play-singletask-task1-v0"]["mean"] == pytest.approx(30.0)
    assert rows["cube-single-play-singletask-task1-v0"]["std"] == pytest.approx(20.0)
    (suite,) = out["suites"]
    assert suite["tasks"] == [1, 2] and suite["seeds"] == 2
    assert suite["per_seed"] == pytest.approx([20.0, 60.0])
    assert suite["mean"] == pytest.approx(40.0) and suite["std"] == pytest.approx(20.0)
    assert suite["published"] == {"DeFlow": 96.0, "FQL": 96.0}
    assert not suite["paper_protocol"] and "tasks [1, 2]" in suite["deviations"]
    assert out["warnings"] == []


def test_paper_protocol_rows_are_marked_and_a_seed_missing_a_task_is_left_out(tmp_path):
    ten = {100_000 * (i + 1): 0.5 for i in range(10)}
    for task in range(1, 6):
        for seed in (0, 1):
            if (task, seed) != (3, 1):
                make_run(tmp_path, suite="puzzle-3x3-play", task=task, seed=seed, evals=ten, total=1_000_000,
                         interval=100_000, episodes=50)
    out = S.summarize([str(tmp_path)])
    (suite,) = out["suites"]
    assert suite["paper_protocol"] and suite["tasks"] == [1, 2, 3, 4, 5]
    assert suite["seed_ids"] == [0] and suite["mean"] == pytest.approx(50.0)
    assert any("seed 1 has no complete run of task(s) [3]" in w for w in out["warnings"])
    table = S.format_suite_table(out["suites"])
    assert "| puzzle-3x3-play | deflow | 1,2,3,4,5 | 1 | 50.0 ± 0.0 | 43 | 30 | paper |" in table


def test_repeated_runs_of_one_seed_count_as_one_seed_with_a_warning(tmp_path):
    make_run(tmp_path, seed=0, evals=full(0.2, 0.2, 0.2), sub="sweepA/run0")
    make_run(tmp_path, seed=0, evals=full(0.4, 0.4, 0.4), sub="sweepB/run0")
    make_run(tmp_path, seed=1, evals=full(0.9, 0.9, 0.9), sub="sweepA/run1")
    out = S.summarize([str(tmp_path)])
    (row,) = out["rows"]
    assert row["seeds"] == 2 and row["runs"] == 3
    assert row["per_seed"] == pytest.approx([30.0, 90.0])  # seed 0 = mean of its two runs
    assert row["mean"] == pytest.approx(60.0)
    (warning,) = out["warnings"]
    assert "seed 0 has 2 runs" in warning and "sweepA/run0" in warning and "sweepB/run0" in warning


def test_crashed_and_unfinished_runs_are_reported_not_averaged(tmp_path, capsys):
    make_run(tmp_path, seed=0, evals=full(0.5, 0.5, 0.5))                     # complete: 50
    d = make_run(tmp_path, seed=1, evals=full(1.0, 1.0, 1.0))                 # complete evals, but FAILED
    with open(os.path.join(d, "FAILED"), "w") as f:
        f.write("RuntimeError: CUDA out of memory\ntraceback...\n")
    make_run(tmp_path, seed=2, evals=full(1.0, 1.0))                          # killed after step 4 of 6
    make_run(tmp_path, seed=3, evals={})                                      # died before any evaluation
    d = make_run(tmp_path, seed=4, evals=full(1.0))
    with open(os.path.join(d, "train.log"), "w") as f:                        # the app's logged error
        f.write("[2026-11-28 08:00:00,000][deflow_trl.app.train][ERROR] - batch_size=512 is larger than the dataset\n")
    make_run(tmp_path, seed=5, evals={2: 1.0, 6: 1.0})                        # an evaluation missing
    os.makedirs(tmp_path / "cube-single-play" / "deflow" / "task1" / "seed6" / ".hydra")  # no config file
    os.makedirs(tmp_path / "cube-single-play" / "deflow" / "task1" / "seed6" / "metrics" / "scalars")
    out = S.summarize([str(tmp_path)])
    status = {r["run_dir"].rsplit("seed", 1)[-1]: (r["status"], r["reason"]) for r in out["runs"]}
    assert status["0"] == ("complete", None)
    assert status["1"] == ("failed", "crashed (FAILED: RuntimeError: CUDA out of memory)")
    assert status["2"][0] == "unfinished" and "last evaluation at step 4 of 6" in status["2"][1]
    assert status["3"][0] == "unfinished" and "no evaluation yet" in status["3"][1]
    assert status["4"] == ("failed", "crashed (batch_size=512 is larger than the dataset)")
    assert status["5"][0] == "unfinished" and "1 of 3 configured evaluations missing (steps [4])" in status["5"][1]
    assert status["6"][0] == "unknown" and "no .hydra/config.yaml" in status["6"][1]
    (row,) = out["rows"]
    assert row["seeds"] == 1 and row["mean"] == pytest.approx(50.0)  # only the complete run
    assert out["warnings"][0].startswith("6 of 7 runs not averaged:")
    # The CLI prints the table and the one warning block on stderr.
    S.main([str(tmp_path)])
    captured = capsys.readouterr()
    assert "| deflow | cube-single-play-singletask-task1-v0 | 50.0 ± 0.0 | 1 | 50.0 | 6 |" in captured.out
    assert "warning: 6 of 7 runs not averaged:" in captured.err and "crashed (FAILED" in captured.err


def test_an_unfinished_run_says_whether_its_process_is_still_running(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for seed, pid in [(0, os.getpid()), (1, dead.pid)]:
        d = make_run(tmp_path, seed=seed, evals=full(0.5))
        with open(os.path.join(d, ".lock"), "w") as f:  # what the app's run-directory lock holds while held
            f.write(f"pid={pid}\nhost={socket.gethostname()}\nstarted=2026-11-28T08:00:00+00:00\n")
    running, stopped = (S.inspect_run(os.path.join(tmp_path, f"cube-single-play/deflow/task1/seed{s}")) for s in (0, 1))
    assert running["status"] == stopped["status"] == "unfinished"
    assert running["reason"] == f"last evaluation at step 2 of 6 (1 of 3 evaluations): still running (pid {os.getpid()} on {socket.gethostname()})"
    assert stopped["reason"].endswith("stopped early (killed, crashed or preempted; relaunch it to resume)")


def test_an_error_logged_by_an_earlier_attempt_does_not_fail_a_run_that_later_finished(tmp_path):
    d = make_run(tmp_path, evals=full(0.3, 0.3, 0.3))
    with open(os.path.join(d, "train.log"), "w") as f:
        f.write("[t][deflow_trl.app.train][ERROR] - refused: different agent\n[t][deflow_trl.app.train][INFO] - resumed\n")
    assert S.inspect_run(d)["status"] == "complete"


def test_a_job_refused_before_its_record_is_listed_with_its_reason_and_never_averaged(tmp_path, capsys):
    """A sweep job that its checks refused leaves only ``FAILED`` (no ``.hydra/``): summarize lists it
    (table and --json) with the marker's first line, and averages only the complete run."""
    make_run(tmp_path, task=1, seed=0, evals=full(0.5, 0.5, 0.5))
    refused = tmp_path / "cube-single-play" / "deflow" / "task9" / "seed0"
    refused.mkdir(parents=True)
    (refused / "FAILED").write_text("task must be one of 1..5 (OGBench single-task ids), got 9\n")
    S.main([str(tmp_path), "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    data = json.load(open(tmp_path / "s.json"))
    by_dir = {r["run_dir"]: r for r in data["runs"]}
    assert set(by_dir) == {"cube-single-play/deflow/task1/seed0", "cube-single-play/deflow/task9/seed0"}
    job = by_dir["cube-single-play/deflow/task9/seed0"]
    assert (job["status"], job["score"]) == ("failed", None)
    assert job["reason"] == "refused (FAILED: task must be one of 1..5 (OGBench single-task ids), got 9)"
    (row,) = data["rows"]
    assert row["task"] == 1 and row["runs"] == 1 and row["mean"] == pytest.approx(50.0)
    assert data["suites"][0]["tasks"] == [1]
    assert ("| cube-single-play/deflow/task9/seed0 | failed | refused (FAILED: task must be one of 1..5 "
            "(OGBench single-task ids), got 9) |") in out


def test_json_names_run_directories_relative_to_the_directory_given(tmp_path, monkeypatch, capsys):
    """A committed summary must not carry the absolute paths of the machine that made it: run directories
    (in runs and in warnings) are relative to the directory given, or to the common parent of several."""
    make_run(tmp_path / "sweepA", seed=0, evals=full(0.2, 0.2, 0.2))
    crashed = make_run(tmp_path / "sweepA", seed=1, evals=full(0.2))
    (tmp_path / "sweepA" / "cube-single-play" / "deflow" / "task1" / "seed1" / "FAILED").write_text("boom\n")
    make_run(tmp_path / "sweepB", seed=0, evals=full(0.4, 0.4, 0.4))  # seed 0 again: a warning names both
    assert os.path.isabs(crashed)

    def summary(*args):
        S.main([*args, "--json", str(tmp_path / "s.json")])
        text = open(tmp_path / "s.json").read()
        assert str(tmp_path) not in text and os.sep + "tmp" not in text, text
        return json.loads(text)

    seeds = ["cube-single-play/deflow/task1/seed0", "cube-single-play/deflow/task1/seed1"]
    data = summary(str(tmp_path / "sweepA"))
    assert [r["run_dir"] for r in data["runs"]] == seeds
    assert "  failed: cube-single-play/deflow/task1/seed1: crashed (FAILED: boom)" in data["warnings"][0]
    monkeypatch.chdir(tmp_path)
    assert [r["run_dir"] for r in summary("sweepA")["runs"]] == seeds  # a relative root: the same names
    assert [r["run_dir"] for r in summary("sweepA/cube-single-play/deflow/task1/seed0")["runs"]] == ["."]
    data = summary(str(tmp_path / "sweepA"), str(tmp_path / "sweepB"))
    assert [r["run_dir"] for r in data["runs"]] == [f"sweepA/{seeds[0]}", f"sweepA/{seeds[1]}", f"sweepB/{seeds[0]}"]
    assert any(f"(sweepA/{seeds[0]}, sweepB/{seeds[0]})" in w for w in data["warnings"]), data["warnings"]
    assert "runs not averaged (directories under .):" in capsys.readouterr().out


def test_committed_json_results_carry_no_machine_paths():
    """The JSON results under docs/ (summaries, benchmarks) name no absolute path of the machine that made them."""
    def strings(value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    docs = os.path.join(REPO, "docs")
    found = {}
    for name in sorted(os.listdir(docs)):
        if name.endswith(".json"):
            with open(os.path.join(docs, name)) as f:
                paths = [s for s in strings(json.load(f)) if re.search(r"(^|[\s=:'\"(])(/|~/|[A-Za-z]:\\)\w", s)]
            if paths:
                found[name] = paths[:3]
    assert found == {}


@pytest.mark.parametrize("case", ["missing", "empty", "only_failed"])
def test_bad_directories_give_one_clear_message(tmp_path, case):
    root = tmp_path / "sweep"
    if case != "missing":
        root.mkdir()
    if case == "only_failed":
        make_run(root, evals=full(0.5))
    with pytest.raises(SystemExit) as err:
        S.main([str(root)])
    msg = str(err.value)
    assert msg.startswith("error: ") and "Traceback" not in msg
    expected = {"missing": "not a directory", "empty": "no run directory under",
                "only_failed": "no complete run to summarize; 1 of 1 runs not averaged"}[case]
    assert expected in msg


@pytest.mark.parametrize("flag", ["--plot", "--bar-plot", "--json"])
def test_unwritable_outputs_fail_before_any_work(tmp_path, flag):
    make_run(tmp_path / "runs", evals=full(0.5, 0.5, 0.5))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for bad, why in [(tmp_path / "no_such_dir" / "x.png", "does not exist"), (blocker / "x.png", "does not exist"),
                     (tmp_path, "is a directory")]:
        with pytest.raises(SystemExit) as err:
            S.main([str(tmp_path / "runs"), flag, str(bad)])
        assert str(err.value).startswith(f"error: cannot write {flag}") or f"{flag} {bad} is a directory" in str(err.value)
        assert why in str(err.value)


@pytest.mark.slow
def test_json_table_and_plots(tmp_path, capsys):
    for task, seed, v in [(1, 0, 0.1), (2, 0, 0.3), (1, 1, 0.5), (2, 1, 0.7)]:
        make_run(tmp_path / "runs", task=task, seed=seed, evals=full(v, v, v))
    S.main([str(tmp_path / "runs"), "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "c.png"),
            "--bar-plot", str(tmp_path / "b.png")])
    out = capsys.readouterr().out
    assert "| cube-single-play | deflow | 1,2 | 2 | 40.0 ± 20.0 | 96 | 96 | not the paper's: tasks [1, 2]" in out
    data = json.load(open(tmp_path / "s.json"))
    assert set(data) >= {"runs", "rows", "suites", "warnings", "source"}
    assert len(data["runs"]) == 4 and data["suites"][0]["mean"] == pytest.approx(40.0)
    assert (tmp_path / "c.png").stat().st_size > 5_000 and (tmp_path / "b.png").stat().st_size > 5_000


# ----------------------------------------------------------------------------- published numbers
EXPECTED = {  # docs/design.md §3, "Published 5-task averages" (success %, 8 seeds): DeFlow / FQL
    "antmaze-large-navigate": (81, 79), "antmaze-giant-navigate": (12, 9), "humanoidmaze-medium-navigate": (48, 58),
    "humanoidmaze-large-navigate": (5, 4), "antsoccer-arena-navigate": (67, 60), "cube-single-play": (96, 96),
    "cube-double-play": (40, 29), "scene-play": (51, 56), "puzzle-3x3-play": (43, 30), "puzzle-4x4-play": (11, 17),
}


def test_published_table_matches_the_design_reference():
    assert {k: (v["DeFlow"], v["FQL"]) for k, v in PUBLISHED.items()} == EXPECTED
    assert PUBLISHED_VISUAL_MANIPULATION == {"DeFlow": 69, "FQL": 65}
    # Every state-based suite of configs/env has its published numbers, under its env.name (the pixel
    # suites have one published number together: PUBLISHED_VISUAL_MANIPULATION).
    names = {OmegaConf.load(os.path.join(REPO, "deflow_trl", "configs", "env", f)).name
             for f in os.listdir(os.path.join(REPO, "deflow_trl", "configs", "env"))}
    assert {n for n in names if not n.startswith("visual-")} == set(PUBLISHED)
    # The project's design document states the same tables (its §3); read them back from the markdown.
    text = open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8").read()
    section = text.split("### Published 5-task averages")[1].split("\n## ")[0]
    averages, online = section.split("Offline → online")
    rows = re.findall(r"^\| ([a-z0-9 ()-]+?) \| (\d+) \| (\d+) \|$", averages, re.M)
    found = {name: (float(a), float(b)) for name, a, b in rows}
    assert found.pop("visual manipulation (5 tasks)") == (69.0, 65.0)
    assert found == {k: (v["DeFlow"], v["FQL"]) for k, v in PUBLISHED.items()} == EXPECTED
    parsed = {name: (float(a), float(b)) for name, a, b in re.findall(r"^\| ([a-z0-9-]+) \| (\d+) \| (\d+) \|$", online, re.M)}
    assert parsed == PUBLISHED_OFFLINE_TO_ONLINE


# ----------------------------------------------------------------------------- the paper experiment
def test_paper_experiment_declares_the_protocol_sweep():
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deflow_trl.app.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=paper", "env=puzzle_3x3", "task=3", "seed=5"],
                      return_hydra_config=True)
    assert (cfg.offline_steps, cfg.online_steps, cfg.eval_interval, cfg.eval_episodes) == (1_000_000, 0, 100_000, 50)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = {o.key_or_group: [int(x) for x in o.sweep_string_iterator()] for o in parsed}
    assert jobs == {"task": [1, 2, 3, 4, 5], "seed": list(range(8))}  # 5 tasks × 8 seeds = 40 runs
    assert cfg.hydra.sweep.dir == "runs/paper"
    assert cfg.hydra.sweep.subdir == "puzzle-3x3-play/deflow/task3/seed5"
    assert S.expected_eval_steps(cfg.offline_steps, cfg.eval_interval)[-S.LAST_EVALS:] == [800_000, 900_000, 1_000_000]


def test_summarize_does_not_import_torch_and_the_package_names_resolve():
    """`deflow-summarize` reads CSVs: importing it must not pay for torch (≈ 5 s); the package's public
    names are imported on first use and all resolve."""
    import subprocess
    import sys

    code = ("import sys, deflow_trl, deflow_trl.app.summarize; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert all(getattr(deflow_trl, n) for n in deflow_trl.__all__); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
