"""The Transformer examples run end to end on tiny settings and write what they say."""

import json

import pytest


@pytest.mark.slow
def test_seq2seq_example(tmp_path, run_example):
    _, out = run_example("transformer_seq2seq.py", "--quick", "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "attention.png").stat().st_size > 0
    assert 0.0 <= results["exact_match"] <= 1.0 and results["test_size"] == 32
    assert "held-out exact-match accuracy (greedy, 32 sequences)" in out


@pytest.mark.slow
def test_vit_digits_example(tmp_path, run_example):
    _, out = run_example("vit_digits.py", "--quick", "--out", tmp_path)
    results = json.loads((tmp_path / "vit_results.json").read_text())
    assert (tmp_path / "vit_attention.png").stat().st_size > 0
    assert results["test_size"] == 360 and results["accuracy"] > 0.1  # above chance after 1 epoch
    assert "held-out accuracy (360 digits)" in out
