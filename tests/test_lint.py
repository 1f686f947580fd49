"""The code is clean under the project's linter: ``ruff check`` with the small rule set of ``pyproject.toml``
(pyflakes, pycodestyle errors/warnings, import order, bugbear). CI lints through this test, so the README's one
test command is also the lint command."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(ruff):
        pytest.fail("ruff is not installed: pip install torch==2.13.0 -e '.[dev]' installs it")
    done = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
