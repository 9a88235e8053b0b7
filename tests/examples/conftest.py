"""`run_example`: runs an example script's `main(argv)` in the test process, as
`python examples/SCRIPT ARGS...` would, without paying a fresh TensorFlow import (~5 s of CPU)
per example. The examples that must own their process (one splits the CPU into logical devices
before TensorFlow starts) keep running as subprocesses."""

import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def run_example(capsys):
    """`run_example(script, *args)` -> `(main's return value, what it printed)`."""

    def run(script, *args):
        module = runpy.run_path(os.path.join(ROOT, "examples", script), run_name="example")
        result = module["main"]([str(a) for a in args])
        return result, capsys.readouterr().out

    return run
