"""The README's code blocks run as written (all but the tour, which trains for minutes and is
what examples/quickstart_segmentation.py does, tested in tests/examples)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    _BLOCKS = re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_has_code_blocks():
    assert len(_BLOCKS) >= 2
    assert "model.fit(" in _BLOCKS[0]  # the tour comes first


@pytest.mark.parametrize("index", range(1, len(_BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    exec(compile(_BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})
