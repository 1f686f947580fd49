"""benchmarks/gpu_check.py without a GPU: the no-CUDA answer, its helpers, and
the whole dry run (every stage at tiny sizes on CPU, as subprocesses)."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def test_no_cuda_says_so_in_one_line_and_exits_3(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--work-dir", str(tmp_path)]) == gpu_check.EXIT_NO_CUDA == 3
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith("gpu_check: no CUDA device") and "--dry-run" in out
    assert not list(tmp_path.iterdir())  # nothing was run or written


def test_bad_arguments_exit_2(capsys):
    for argv in (["--stages", "tests,gpu"], ["--dry-run", "--limit", "train"], ["--dry-run", "--limit", "train=soon"]):
        with pytest.raises(SystemExit) as info:
            gpu_check.main(argv)
        assert info.value.code == 2
    assert "unknown stage" in capsys.readouterr().err


def test_card_names_and_limits():
    assert gpu_check.card_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_check.card_slug("NVIDIA H200") == "h200"
    assert gpu_check.card_slug("NVIDIA A100-SXM4-40GB") == "a100"
    assert gpu_check.card_slug("NVIDIA GeForce RTX 4090") == "4090"
    assert sum(gpu_check.LIMITS_S.values()) <= 8 * 60  # the budget on one H100
    assert gpu_check.parse_limits(["train=30", "tests=5.5"]) == {"train": 30.0, "tests": 5.5}


def test_targets_from_benchmark_json():
    sampler = {"hidden": [512] * 4, "gemm_gflops": {"bf16 4096x512x512": 400e3, "bf16 8192x8192x8192": 800e3},
               "rows": [{"backend": "triton", "batch": 1, "latency_ms": 0.045, "gflops": 1.0},
                        {"backend": "triton-bf16", "batch": 1, "latency_ms": 0.060, "gflops": 1.0},
                        {"backend": "eager", "batch": 1, "latency_ms": 0.9, "gflops": 1.0},
                        {"backend": "triton-bf16", "batch": 4096, "latency_ms": 1.0, "gflops": 300e3}]}
    update = {"rows": [{"config": "reference", "mode": "eager", "ms_per_update": 10.0},
                       {"config": "reference", "mode": "compiled (+ CUDA graphs)", "ms_per_update": 4.0},
                       {"config": "reference", "mode": "compiled + bf16 solves (+ CUDA graphs)", "ms_per_update": 1.0}]}
    t = gpu_check.evaluate_targets(sampler, update)
    assert t["batch1_latency_us"]["value"] == pytest.approx(45.0) and t["batch1_latency_us"]["met"] is True
    assert t["batch4096_vs_bf16_gemm"]["fraction_same_shape"] == pytest.approx(0.75)
    assert t["batch4096_vs_bf16_gemm"]["fraction_best"] == pytest.approx(0.375)
    assert t["batch4096_vs_bf16_gemm"]["met"] is False  # judged against the card's best bf16 rate
    assert t["compiled_update_speedup"]["value"] == pytest.approx(2.5) and t["compiled_update_speedup"]["met"]
    empty = gpu_check.evaluate_targets(None, None)
    assert all(v["met"] is None for v in empty.values())


def test_pytest_summary_parsing():
    out = ("..F.\n=========================== short test summary info ============================\n"
           "FAILED tests/test_kernels.py::test_sampler_paths_match_eager - AssertionError: ((32, 48), 'euler')\n"
           "1 failed, 12 passed, 2 deselected, 15 warnings in 30.12s\n")
    counts, failed = gpu_check.pytest_counts(out)
    assert counts == {"failed": 1, "passed": 12, "deselected": 2}
    assert failed == ["tests/test_kernels.py::test_sampler_paths_match_eager"]


def test_train_metrics_reader(tmp_path):
    d = tmp_path / "metrics" / "scalars" / "train"
    d.mkdir(parents=True)
    (d / "loss_flow.csv").write_text("10,0.5\n20,0.25\n")
    (d / "loss_qvalue.csv").write_text("10,1.0\n20,nan\n")
    m = gpu_check.read_train_metrics(tmp_path)
    assert m["loss_flow"] == [(10, 0.5), (20, 0.25)] and len(m["loss_qvalue"]) == 2


@pytest.mark.slow
def test_dry_run_stages_on_cpu(tmp_path):
    """The plumbing of the stages at tiny sizes, as subprocesses. Only the three benchmark stages run
    here (≈ 15 s on 2 cores): ``tests``, ``update`` and ``train`` run what CI runs anyway
    (tests/test_backends.py, tests/test_update.py's compiled-vs-eager, the app's resume tests) through the
    same ``run_cmd``; their parsing (pytest summary, train metrics) has fast tests above. The whole dry
    run: ``python benchmarks/gpu_check.py --dry-run``."""
    out = tmp_path / "gpu_check.json"
    stages = ["sampler", "update_bench", "seeds"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                           "--stages", ",".join(stages), "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["passed"]
    assert list(report["stages"]) == stages
    assert all(s["status"] == "passed" for s in report["stages"].values())
    assert {(r["backend"], r["batch"]) for r in report["sampler"]["rows"]} == {
        (b, n) for b in ("eager", "eager-bf16") for n in (1, 4)}
    assert "native bf16" in report["sampler"]["cpu"] and "native bf16" in report["update_bench"]["machine"]["cpu"]
    assert "| stage | status |" in proc.stdout and "targets (issue 14)" in proc.stdout
    assert [r["seeds"] for r in report["seeds"]["rows"]] == [1, 2]  # the seed-group timing (issue 24)
