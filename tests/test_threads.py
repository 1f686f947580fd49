"""Threads that fit the machine (``deflow_trl/threads.py``; ``docs/design.md`` §7): usable CPUs from the affinity
mask and the cgroup quota, the app's ``threads`` setting, and the passive OpenMP wait policy."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deflow_trl import threads


def _fake_cgroup(monkeypatch, proc_cgroup: str):
    real = threads._read
    monkeypatch.setattr(threads, "_read", lambda path: proc_cgroup if path == "/proc/self/cgroup" else real(path))


@pytest.mark.parametrize("cpu_max,expected", [("150000 100000", 1.5), ("max 100000", None), ("50000 100000", 0.5)])
def test_cgroup_v2_quota(tmp_path, monkeypatch, cpu_max, expected):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text(cpu_max + "\n")
    _fake_cgroup(monkeypatch, "0::/job\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) == expected


def test_cgroup_v1_quota_and_no_cgroup(tmp_path, monkeypatch):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    _fake_cgroup(monkeypatch, "4:cpu,cpuacct:/\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) is None
    assert threads.cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": None)
    assert threads.usable_cpus() == 8
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": 2.5)  # a container's quota
    assert threads.usable_cpus() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3 / a SLURM job of one CPU
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": 0.2)
    assert threads.usable_cpus() == 1


def test_resolve_threads_accepts_auto_and_counts_and_refuses_the_rest_in_one_line(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    assert threads.resolve_threads("auto") == 2 and threads.resolve_threads(1) == 1 and threads.resolve_threads("2") == 2
    for bad, message in [(0, "got 0"), (-3, "got -3"), ("abc", "got 'abc'"), (1.5, "got 1.5"), (True, "got True"),
                         (3, r"threads=3 but this process may use only 2 CPU\(s\)")]:
        with pytest.raises(ValueError, match=message) as err:
            threads.resolve_threads(bad)
        assert "\n" not in str(err.value)


def test_prefer_short_spin_only_before_torch_and_never_over_a_user_choice():
    code = ("import os, sys; from deflow_trl import threads; first = threads.prefer_short_spin(); "
            "print(first, os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True,
                                       check=True).stdout.split()
    assert run({}) == ["True", "1000", "False"]  # importing deflow_trl.threads does not import torch
    assert run({"GOMP_SPINCOUNT": "50"}) == ["False", "50", "False"]
    assert run({"OMP_WAIT_POLICY": "PASSIVE"}) == ["False", "None", "False"]
    late = "import torch, os; from deflow_trl import threads; print(threads.prefer_short_spin(), os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "None"]  # too late to matter: left alone


def test_the_training_entry_point_shortens_the_spin_before_torch_loads(tmp_path):
    """``python -m deflow_trl.train`` sets GOMP_SPINCOUNT before torch (and its OpenMP runtime) is imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-m", "deflow_trl.train", "--cfg", "job", "--package", "threads"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = ("import runpy, sys, os; sys.argv = ['x', '--help']\n"
             "import deflow_trl.threads as t\n"
             "orig = t.prefer_short_spin\n"
             "def spy(*a, **k):\n    r = orig(*a, **k); print('SPIN', r, 'torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT')); return r\n"
             "t.prefer_short_spin = spy\n"
             "runpy.run_module('deflow_trl.train', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert "SPIN True False 1000" in out.stdout, out.stdout[-1000:] + out.stderr[-2000:]


def test_a_backend_that_cannot_run_here_is_one_line_naming_the_ones_that_can(monkeypatch):
    """agent.backend=triton on a CPU is refused before any work, naming what this device can run."""
    from hydra import compose, initialize_config_dir

    from deflow_trl.app.config_schema import validate_config
    from deflow_trl.app.train import CONFIG_DIR
    from deflow_trl.errors import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose("train", overrides=["agent.backend=triton", "device=cpu"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert message.startswith("agent.backend=triton: ") and "available on cpu: eager, compile" in message, message
    assert "\n" not in message
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose("train", overrides=["threads=0"])
    with pytest.raises(ConfigError, match="^threads must be 'auto', 'adaptive' or a count >= 1, got 0$"):
        validate_config(cfg)


def test_other_load_is_the_machines_busy_time_minus_this_process(monkeypatch):
    """Fake /proc/stat and clocks: 3 s of wall time, 5 CPU-seconds busy machine-wide, 2 of them this process's."""
    hz = os.sysconf("SC_CLK_TCK")
    stats = iter([f"cpu  {100 * hz} 0 0 {900 * hz} 0 0 0 0 0 0\n", f"cpu  {105 * hz} 0 0 {901 * hz} 0 0 0 0 0 0\n"])
    clocks = iter([10.0, 13.0])
    cpu = iter([1.0, 3.0])
    monkeypatch.setattr(threads, "_read", lambda path: next(stats) if path == "/proc/stat" else None)
    monkeypatch.setattr("time.monotonic", lambda: next(clocks))
    monkeypatch.setattr("time.process_time", lambda: next(cpu))
    load = threads.OtherLoad()
    assert load.sample() is None  # opens the window
    assert load.sample() == pytest.approx((5 - 2) / 3)  # 1 CPU kept busy by others


def test_adaptive_threads_give_a_busy_core_back_and_take_it_again(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        adaptive = threads.AdaptiveThreads(usable=2, current=2)
        assert [adaptive.decide(o) for o in (None, 0.0, 0.4, 0.6, 1.0, 1.7, 3.0)] == [2, 2, 2, 1, 1, 1, 1]
        loads = iter([1.0, 1.0, 0.05])
        monkeypatch.setattr(adaptive.load, "sample", lambda: next(loads))
        assert adaptive.update() == (2, 1, 1.0) and torch.get_num_threads() == 1  # a neighbour: one core left to it
        assert adaptive.update() is None  # still there: nothing changes
        assert adaptive.update() == (1, 2, 0.05) and torch.get_num_threads() == 2  # it left
    finally:
        torch.set_num_threads(before)
