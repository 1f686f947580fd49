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
        "pip install torch==2.13.0 -e . && python -m deflow_trl.train +experiment=quick",
        'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q',
    ]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert commands[1] in ci
