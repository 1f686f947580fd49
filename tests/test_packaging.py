"""Packaging: the light core, console scripts, a wheel in a fresh venv, the closed config schema, a quiet app."""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import tomllib
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from deflow_trl.app.config_schema import TrainSchema
from deflow_trl.app.train import CONFIG_DIR, run
from deflow_trl.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_ONLY = ["ogbench", "mujoco", "hydra", "omegaconf", "matplotlib", "scipy", "tqdm", "gymnasium", "dm_control", "absl"]
# What the README's main command printed before the app silenced it (GLFW, absl, gymnasium, TorchRL, PyOpenGL).
NOISE = ["DISPLAY environment variable", "GLFW", "absl", "MUJOCO_GL", "MuJoCo library version",
         "precision lowered", "UserWarning", "Initialized LazyTensorStorage", "OpenGL_accelerate"]
TINY_RUN = ["agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2", "batch_size=16", "eval_episodes=1", "progress=false",
            "data.generate_if_missing=false", "compile_update=false", "agent.backend=eager", "offline_steps=20",
            "eval_interval=20", "log_interval=10", "save_interval=20"]


def _clean_env(**extra):
    """The environment of a user's shell without a display: no MUJOCO_GL, no DISPLAY, no repo on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM", "PYTHONPATH")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env | extra


# ----------------------------------------------------------------------------- light core
@pytest.mark.slow
def test_core_works_without_the_app_extra(tmp_path):
    """With every app package unimportable: the core imports and trains one loss call; the apps say what to install."""
    script = textwrap.dedent(f"""
        import os, runpy, sys, warnings
        for name in {APP_ONLY!r}:
            sys.modules[name] = None  # `import name` raises ImportError; find_spec says: not installed
        import torch, torchrl.envs, torchrl.objectives  # their own warning filters come first
        from tensordict import TensorDict
        filters, level = list(warnings.filters), __import__("logging").getLogger("torchrl").level
        from deflow_trl import DeFlowActor, DeFlowLoss, make_deflow
        assert warnings.filters == filters and "MUJOCO_GL" not in os.environ  # import sets nothing global
        assert __import__("logging").getLogger("torchrl").level == level
        torch.manual_seed(0)
        policy, loss = make_deflow(4, 2, hidden_sizes=(8, 8))
        assert isinstance(policy, DeFlowActor) and isinstance(loss, DeFlowLoss)
        n = 16
        batch = TensorDict({{"observation": torch.randn(n, 4), "action": torch.rand(n, 2) * 2 - 1,
                             "next": {{"observation": torch.randn(n, 4), "reward": torch.randn(n, 1),
                                      "done": torch.zeros(n, 1, dtype=torch.bool),
                                      "terminated": torch.zeros(n, 1, dtype=torch.bool)}}}}, [n])
        out = loss(batch)
        total = sum(out[k] for k in ("loss_qvalue", "loss_flow", "loss_actor", "loss_alpha"))
        total.backward()
        assert torch.isfinite(total), out
        print("CORE-OK", sorted(k for k in out.keys() if k.startswith("loss_")))
        try:
            import deflow_trl
            deflow_trl.propose_delta
        except ImportError as err:
            print("LAZY:", err)
        from deflow_trl.app.cli import train
        modules = ["deflow_trl.train", "deflow_trl.data.generate", "deflow_trl.data.iav_cli", "deflow_trl.summarize"]
        for entry in [train] + [lambda m=m: runpy.run_module(m, run_name="__main__") for m in modules]:
            try:
                entry()
            except SystemExit as stop:
                print("EXIT", stop.code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=_clean_env(PYTHONPATH=ROOT, RL_WARNINGS="False"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CORE-OK ['loss_actor', 'loss_alpha', 'loss_flow', 'loss_qvalue']" in proc.stdout
    assert "LAZY: deflow_trl.propose_delta needs scipy, which is not installed: pip install 'deflow_trl[app]'" in proc.stdout
    assert proc.stdout.count("EXIT 1") == 5  # deflow-train and the four `python -m` apps
    missing = "needs ogbench, hydra-core, matplotlib, tqdm, scipy, which are not installed: pip install 'deflow_trl[app]'"
    errors = proc.stderr.strip().splitlines()
    assert errors == [f"[deflow_trl] error: deflow-train {missing}"] + [
        f"[deflow_trl] error: python -m {m} {missing}"
        for m in ("deflow_trl.train", "deflow_trl.data.generate", "deflow_trl.data.iav_cli", "deflow_trl.summarize")
    ], proc.stderr[-3000:]


def test_dependencies_split_core_and_app():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    core = sorted(req.split(">")[0].split("<")[0].split("=")[0] for req in project["dependencies"])
    assert core == ["numpy", "tensordict", "torch", "torchrl"]
    app = {req.split(">")[0] for req in project["optional-dependencies"]["app"]}
    assert app == {"ogbench", "hydra-core", "matplotlib", "tqdm", "scipy"}
    assert "deflow_trl[app]" in project["optional-dependencies"]["dev"]
    assert project["scripts"] == {"deflow-train": "deflow_trl.app.cli:train", "deflow-generate": "deflow_trl.app.cli:generate",
                                  "deflow-iav": "deflow_trl.app.cli:iav", "deflow-summarize": "deflow_trl.app.cli:summarize"}
    for extra in ("joblib", "slurm", "tensorboard", "wandb"):  # app features: each brings the app
        assert "deflow_trl[app]" in project["optional-dependencies"][extra], extra
    # The README's two commands (`.[app]`, `.[dev]`) and .ci/run: tests/test_examples.py.


@pytest.mark.parametrize("script,module", [("generate", "deflow_trl.data.generate"), ("iav", "deflow_trl.data.iav_cli"),
                                           ("summarize", "deflow_trl.app.summarize")])
def test_console_scripts_reach_their_main(monkeypatch, capsys, script, module):
    import importlib

    import deflow_trl.app.cli as cli

    # the test process keeps its filters and environment: the app module's own quiet_app does nothing here
    monkeypatch.setattr(importlib.import_module(module), "quiet_app", lambda: None, raising=False)
    monkeypatch.setattr(sys, "argv", [f"deflow-{script}", "--help"])
    with pytest.raises(SystemExit) as stop:
        getattr(cli, script)()
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert callable(__import__(module, fromlist=["main"]).main)


# ----------------------------------------------------------------------------- the wheel
def make_venv(venv) -> str:
    """A new venv without pip (``pip --python`` installs into it); the path of its Python."""
    done = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    return str(venv / "bin" / "python")


def see_this_environment(python: str) -> None:
    """Makes the venv of ``python`` see the packages of the interpreter running the tests, after its own.

    ``venv --system-site-packages`` is not enough: made from a venv's Python (``/work/venv/bin/python``),
    the new venv sees the *base* interpreter's site-packages, not that venv's (where torch is). So a
    ``.pth`` file in the new venv's site-packages adds the running interpreter's site directories with
    ``site.addsitedir`` (their own ``.pth`` files apply, as with ``--system-site-packages``). They come
    after the venv's own site-packages on ``sys.path``, so a package installed there (the wheel) wins over
    the same name here (an editable install of this repo, whose finder is consulted after the path).
    Call it after installing into the venv: pip would otherwise find this environment's ``deflow_trl``
    of the same version and skip the wheel.
    """
    import site
    import sysconfig

    ours = site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        ours.append(site.getusersitepackages())
    ours = [d for i, d in enumerate(ours) if os.path.isdir(d) and d not in ours[:i]]
    done = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = done.stdout.strip()
    assert theirs not in ours, (theirs, ours)
    with open(os.path.join(theirs, "_deflow_tests_outer_environment.pth"), "w") as f:
        f.writelines(f"import site; site.addsitedir({d!r})\n" for d in ours)


def test_a_venv_made_from_this_interpreter_sees_its_packages_and_its_own_first(tmp_path):
    """The venv the wheel test installs into imports torch from the environment running the tests (a venv
    itself, or the base interpreter), while a package in its own site-packages wins over the same name there."""
    venv = tmp_path / "venv"
    python = make_venv(venv)
    see_this_environment(python)
    (own,) = [p for p in (venv / "lib").glob("python*/site-packages")]
    (own / "deflow_trl").mkdir()
    (own / "deflow_trl" / "__init__.py").write_text("")
    code = "import deflow_trl, torch; print(deflow_trl.__file__); print(torch.__file__)"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_clean_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, torch_file = done.stdout.split()
    assert ours.startswith(str(own)), ours
    import torch

    assert os.path.samefile(torch_file, torch.__file__), (torch_file, torch.__file__)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_finds_its_configs_and_trains_quietly(tiny_ogbench_dir, tmp_path):
    """Build a wheel, install it (no deps) into a fresh venv that sees the test environment's torch etc.
    (:func:`see_this_environment`: the tests may run in a venv themselves), run it outside the repo.

    The test environment may hold an editable install of this repo: the venv's site-packages come first on
    ``sys.path`` (and the editable finder is consulted after the path), so the wheel's copy wins;
    the test checks that it does.
    """
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "deflow_trl"), src / "deflow_trl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert built.returncode == 0, built.stdout[-1500:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("deflow_trl-*.whl")
    venv = tmp_path / "venv"
    python = make_venv(venv)
    installed = subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout[-1500:] + installed.stderr[-3000:]
    see_this_environment(python)  # after the install: pip would skip a wheel of the version seen here
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _clean_env()

    where = subprocess.run([python, "-c", "import deflow_trl.app.train as t, os; print(t.__file__); "
                            "print(os.path.isfile(os.path.join(t.CONFIG_DIR, 'train.yaml')))"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    where = where.stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "True", where

    train = str(venv / "bin" / "deflow-train")
    for script in ("deflow-generate", "deflow-iav", "deflow-summarize"):
        assert os.access(venv / "bin" / script, os.X_OK), script
    helped = subprocess.run([train, "--help"], capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert helped.returncode == 0, helped.stdout[-1500:] + helped.stderr[-3000:]
    assert re.search(r"^experiment: .*\bquick\b", helped.stdout, re.M), helped.stdout  # the installed configs

    run_dir = tmp_path / "run"
    proc = subprocess.run([train, *TINY_RUN, f"data.dataset_dir={tiny_ogbench_dir}", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, cwd=work, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "success rate 0.0% at step 20" in output or "at step 20 (" in output, output
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "learning_curve.png").is_file()
    assert [n for n in NOISE if n in output] == [], output  # the quiet console: nothing from third parties


# ----------------------------------------------------------------------------- the config schema
def _schema_node(path):
    node = OmegaConf.structured(TrainSchema)
    for part in path:
        node = node[part]
    return node


def test_every_shipped_config_fits_the_schema():
    """Each YAML of deflow_trl/configs merges into its schema node: no unknown key, every literal of the right type."""
    checked = 0
    for group, node_path in [("agent", ["agent"]), ("env", ["env"]), ("logger", ["logger"]), ("experiment", []), ("", [])]:
        folder = os.path.join(CONFIG_DIR, group)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".yaml")) if group else ["train.yaml"]
        for name in files:
            content = OmegaConf.to_container(OmegaConf.load(os.path.join(folder, name)), resolve=False)
            content = {k: v for k, v in content.items() if k not in ("defaults", "hydra")}
            OmegaConf.merge(_schema_node(node_path), content)  # raises naming the key if it does not fit
            checked += 1
    assert checked >= 15 + 3 + 3 + 3 + 1  # suites, agents, loggers, experiments, train.yaml


@pytest.mark.parametrize(
    "override,message",
    [
        ("+agent.hidden_sise=[8]", "agent.hidden_sise: unknown key (did you mean agent.hidden_sizes?)"),
        ("+foo=1", "foo: unknown key (known: env, agent, logger, data, online, seed, seeds, seeds_per_job, task,"),
        ("+data.storge=memmap", "data.storge: unknown key (did you mean data.storage?)"),
        ("offline_steps=abc", "offline_steps: Value 'abc' of type 'str' could not be converted to Integer"),
        ("agent.refine=maybe", "agent.refine: Value 'maybe' is not a valid bool"),
    ],
)
def test_unknown_keys_and_wrong_types_fail_before_any_work(tmp_path, monkeypatch, override, message):
    def no_env(*a, **k):
        raise AssertionError("the env was built before the config was checked")

    monkeypatch.setattr("deflow_trl.envs.make_ogbench_env", no_env)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data.dataset_dir={tmp_path / 'data'}", override])
    with pytest.raises(ConfigError) as err:
        run(cfg, str(tmp_path / "run"))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_unknown_key_without_plus_is_refused_by_hydra():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match=r"agent\.hidden_sise"):
            compose("train", overrides=["agent.hidden_sise=[8]"])
