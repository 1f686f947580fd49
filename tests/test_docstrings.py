"""Every ``Examples:`` block in the package's docstrings runs and prints what it shows (doctest)."""
import doctest
import importlib
import pkgutil

import pytest

import deflow_trl

# Triton kernels need TRITON_INTERPRET=1 set before import (tests/test_kernels.py does that in a subprocess).
SKIP = ("deflow_trl.kernels",)
MODULES = ["deflow_trl"] + sorted(m.name for m in pkgutil.walk_packages(deflow_trl.__path__, "deflow_trl.")
                                  if not m.name.startswith(SKIP))


def test_the_package_has_docstring_examples():
    finder = doctest.DocTestFinder()
    with_examples = [name for name in MODULES if any(t.examples for t in finder.find(importlib.import_module(name)))]
    assert len(with_examples) >= 27, with_examples  # 27 modules had examples when this test was written


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
