"""The README's examples are real: the code blocks equal examples/*.py, and those run."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


@pytest.mark.parametrize("name,expect", [("compose_loop.py", "actions:"), ("torchrl_trainer.py", "buffer size after training: 1200")])
def test_readme_example_runs(name, expect):
    source = open(os.path.join(ROOT, "examples", name)).read()
    assert source.strip() in README, f"README's block for examples/{name} is out of date"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expect in done.stdout


def test_readme_leads_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'pip install torch==2.13.0 -e ".[app]" && python -m deflow_trl.train +experiment=quick',  # the app extra
        'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q',
    ]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert commands[1] in ci


def test_quick_experiment_is_the_method_on_a_pinned_task_and_the_readme_says_so():
    """The README's main run changes only size and budget, never the method or the evaluation protocol,
    and its paragraph states the config's numbers (a retune must update both)."""
    from hydra import compose, initialize_config_dir

    from deflow_trl.app.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        quick = compose("train", overrides=["+experiment=quick"])
        full = compose("train")
    assert quick.task == 1 and quick.dataset == "cube-single-play-singletask-task1-v0"  # pinned, not env.default_task
    for key in ("num_flow_steps", "solver", "num_critics", "lr", "tau", "discount", "target_divergence",
                "q_agg", "normalize_q_loss", "init_log_alpha", "sampling", "refine"):
        assert quick.agent[key] == full.agent[key], key
    assert quick.agent.bf16_solves == "auto" and full.agent.bf16_solves is False  # a precision setting: native only
    assert quick.batch_size == full.batch_size and quick.online_steps == 0
    assert quick.eval_episodes >= 20 and quick.offline_steps % quick.eval_interval == 0
    paragraph = README.split("**What the quick run shows, and what it cannot.**")[1].split("\n\n")[0]
    paragraph = " ".join(paragraph.split())
    width, depth = quick.agent.hidden_sizes[0], len(quick.agent.hidden_sizes)
    for text in (f"{quick.data.generate_episodes} episodes", f"{quick.offline_steps:,} DeFlow updates",
                 f"{depth}×{width} networks", f"{quick.eval_episodes} episodes each", f"task {quick.task}"):
        assert text in paragraph, text
