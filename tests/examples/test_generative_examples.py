"""The generative examples run end to end on tiny settings and write the figures and results
they say they write."""

import json
import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(script, *args):
    runpy.run_path(os.path.join(ROOT, "examples", script))["main"](list(args))


@pytest.mark.slow
def test_vae_digits_example(tmp_path, capsys):
    _main("vae_digits.py", "--out", str(tmp_path), "--epochs", "3", "--num-train", "300")
    for name in ("vae_samples.png", "vae_traversal.png", "vae_reconstructions.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "vae_results.json").read_text())
    elbo = results["held_out_negative_elbo"]
    assert elbo["after"] < elbo["before"]  # even 3 epochs improve the ELBO
    assert 0 < results["held_out_reconstruction_mse"] and 0 < results["mean_digit_mse"]
    assert "held-out negative ELBO" in capsys.readouterr().out


@pytest.mark.slow
def test_cyclegan_example(tmp_path, capsys):
    _main("cyclegan.py", "--out", str(tmp_path), "--steps", "2", "--batch-size", "2",
          "--filters", "2", "--blocks", "1")
    assert (tmp_path / "cyclegan_translations.png").stat().st_size > 0
    results = json.loads((tmp_path / "cyclegan_results.json").read_text())
    assert set(results["last_losses"]) == {"g_loss", "adversarial_loss", "cycle_loss",
                                           "identity_loss", "d_a_loss", "d_b_loss"}
    # The classifiers work on their own domain, so the yardstick is sound.
    assert results["classifier_on_B"]["real_B"] > 0.8
    assert results["classifier_on_A"]["real_A"] > 0.8
    assert "digit classifier trained on B" in capsys.readouterr().out
