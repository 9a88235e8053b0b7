"""The `>>>` examples in the docstrings of kcv, custom_ops and export run and print what they say.

The equivalent of `pytest --doctest-modules kcv custom_ops export`, as a normal test so that
`make test` runs it: one test per module that has examples, with ELLIPSIS and
NORMALIZE_WHITESPACE. Examples may use `np`, `tf`, `keras` and `kcv` without importing them (as
pytest's `doctest_namespace` would provide) and run in a temporary working directory, so an
example that writes a file leaves nothing behind.
"""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv

_PACKAGES = ("kcv", "custom_ops", "export")
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_GLOBALS = {"np": np, "tf": tf, "keras": keras, "kcv": kcv}


def _module_names():
    names = []
    for package in _PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            if info.name.rsplit(".", 1)[-1] != "__main__":  # importing it runs the command
                names.append(info.name)
    return names


def _examples(name):
    finder = doctest.DocTestFinder(exclude_empty=True)
    module = importlib.import_module(name)
    return [t for t in finder.find(module, name, extraglobs=_GLOBALS) if t.examples]


_WITH_EXAMPLES = [name for name in _module_names() if _examples(name)]


def test_the_packages_have_examples():
    # The walk itself must find the modules the docs show examples for.
    assert {"custom_ops.nms", "custom_ops.roi_align", "export"} <= set(_WITH_EXAMPLES)


@pytest.mark.parametrize("name", _WITH_EXAMPLES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    failures = []
    for test in _examples(name):
        result = runner.run(test, out=failures.append, clear_globs=True)
        assert result.attempted > 0
    assert not failures, "".join(failures)
