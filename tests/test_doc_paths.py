"""Every dotted name the README and docs/*.md show (`custom_ops.multiscale_roi_align`,
`kcv.layers.RoIAlign`, `export.to_tflite`, ...) resolves as a user would type it: attribute by
attribute from the imported package, a submodule only where there is no such attribute (so a
function that shadows its own module, as `custom_ops.roi_align` does, is caught)."""

import glob
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
_PATH = re.compile(r"(?<![\w./-])((?:kcv|custom_ops|export)(?:\.[A-Za-z_]\w*)+)")


def _documented_paths():
    found = {}
    for doc in _DOCS:
        with open(doc, encoding="utf-8") as f:
            for path in _PATH.findall(f.read()):
                found.setdefault(path, os.path.relpath(doc, ROOT))
    return sorted(found.items())


def _resolve(dotted):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
        else:  # `from a.b import c` also finds a submodule the package does not import
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def test_the_docs_name_paths():
    assert len(_documented_paths()) > 20


@pytest.mark.parametrize("dotted, doc", _documented_paths())
def test_documented_path_resolves(dotted, doc):
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{doc} names `{dotted}`, which does not resolve: {err}")
