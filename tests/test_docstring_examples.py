"""The `>>>` examples in the docstrings of custom_ops, export, kcv.training, kcv.data,
kcv.metrics and kcv's command-line/compat modules run as written and print what they show.
Each example runs in a fresh temporary folder (the ones that write files write them there)."""

import doctest
import importlib

import pytest

_MODULES = [
    "custom_ops._context", "custom_ops.boxes", "custom_ops.deform_conv", "custom_ops.nms",
    "custom_ops.roi_align", "custom_ops.roi_pool",
    "export", "export._litert", "export.saved_model", "export.tflite", "export.verify",
    "kcv._compat", "kcv.cli",
    "kcv.training.fit", "kcv.training.lr_finder", "kcv.training.schedules",
    "kcv.training.strategy",
    "kcv.data.folder", "kcv.data.synthetic", "kcv.metrics.segmentation",
]


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            # `finder.find` also walks objects a module imports from elsewhere; keep its own.
            if test.examples and test.filename == module.__file__:
                yield pytest.param(test, id=test.name)


_TESTS = list(_examples())


def test_examples_were_found():
    assert len(_TESTS) >= 25


@pytest.mark.parametrize("test", _TESTS)
def test_docstring_example_runs(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
