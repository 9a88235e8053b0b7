"""The TF Serving REST contract, as https://www.tensorflow.org/tfx/serving/api_rest documents it.

The request bodies are written here as that page shows them (row `instances`, columnar
`inputs`, `{"b64": ...}` for bytes, the `half_plus_three` example with its documented answer
`{"predictions": [3.5, 4.0, 5.5]}`). They are answered in a process where kcv and custom_ops
cannot be imported (as in TF Serving), and the response layouts (`predictions` as a list of
objects, `outputs` as an object of name -> tensor, names omitted for a single output) and values
are checked against the Keras model here. `saved_model_cli show --all` is compared with a golden
copy of its signature part. The local server is tried on the loopback address only.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf

import export
from export import rest
from kcv.models import UNet

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    unet = UNet((8, 8, 3), 2, filters=2, depth=1)
    base = tmp_path_factory.mktemp("models")
    export.to_saved_model(unet, base / "unet", serving="uint8", version=1)
    half = keras.Sequential([keras.Input(()), keras.layers.Rescaling(0.5, offset=3.0)])
    export.to_saved_model(half, base / "half_plus_three", version=123)
    return unet, base


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype("uint8")


def _answer_without_kcv(base, requests, tmp_path):
    """Answers `[(model, signature, body), ...]` in a subprocess that cannot import kcv."""
    with open(tmp_path / "requests.json", "w") as f:
        json.dump(requests, f)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["kcv"] = None  # as in TF Serving: kcv is not importable
        sys.modules["custom_ops"] = None
        import tensorflow as tf
        from export import rest
        answers, models = [], {{}}  # each SavedModel loaded once, as a server keeps it
        for model, version, body in json.load(open({str(tmp_path / 'requests.json')!r})):
            path = {str(base)!r} + "/" + model + "/" + str(version)
            if path not in models:
                models[path] = tf.saved_model.load(path)
            fn = models[path].signatures[body.get("signature_name", "serving_default")]
            try:
                answers.append(rest.predict(fn, body))
            except rest.RequestError as err:
                answers.append({{"error": str(err)}})
        json.dump(answers, open({str(tmp_path / 'answers.json')!r}, "w"))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "answers.json") as f:
        return json.load(f)


def test_request_formats_and_response_layouts(exported, tmp_path):
    unet, base = exported
    x = _pixels((2, 8, 8, 3))
    png = [base64.b64encode(tf.io.encode_png(image).numpy()).decode("ascii") for image in x]
    requests = [
        ("half_plus_three", 123, {"instances": [1.0, 2.0, 5.0]}),  # the page's example
        ("half_plus_three", 123, {"inputs": [1.0, 2.0, 5.0]}),
        ("unet", 1, {"signature_name": "serving_default", "instances": x.tolist()}),
        ("unet", 1, {"inputs": {"image": x.tolist()}}),
        ("unet", 1, {"inputs": x.tolist()}),
        ("unet", 1, {"signature_name": "serving_bytes",
                     "instances": [{"b64": png[0]}, {"image_bytes": {"b64": png[1]}}]}),
        ("unet", 1, {"instances": x.tolist(), "inputs": x.tolist()}),
        ("unet", 1, {"inputs": {"pixels": x.tolist()}}),
    ]
    answers = _answer_without_kcv(base, requests, tmp_path)
    assert answers[0] == {"predictions": [3.5, 4.0, 5.5]}
    assert answers[1] == {"outputs": [3.5, 4.0, 5.5]}

    probabilities = np.asarray(unet(x.astype("float32") / 255.0))
    row = answers[2]
    assert list(row) == ["predictions"] and len(row["predictions"]) == 2
    for i, instance in enumerate(row["predictions"]):  # one object per example
        assert sorted(instance) == ["mask", "probabilities"]
        np.testing.assert_allclose(instance["probabilities"], probabilities[i], atol=1e-5)
        np.testing.assert_array_equal(instance["mask"], probabilities[i].argmax(-1))
    for columnar in answers[3:5]:  # an object of name -> whole tensor
        assert list(columnar) == ["outputs"]
        assert sorted(columnar["outputs"]) == ["mask", "probabilities"]
        np.testing.assert_allclose(columnar["outputs"]["probabilities"], probabilities,
                                   atol=1e-5)
    encoded = answers[5]["predictions"]
    assert [instance["image_size"] for instance in encoded] == [[8, 8], [8, 8]]
    np.testing.assert_allclose([instance["probabilities"] for instance in encoded],
                               probabilities, atol=1e-5)
    assert "not both" in answers[6]["error"]
    assert "pixels" in answers[7]["error"] and "image" in answers[7]["error"]


def test_bytes_outputs_are_sent_as_b64():
    # "Named tensors that have _bytes as a suffix in their name are considered to have binary
    # values" and come back as {"b64": ...}.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo(text):
        return {"echo_bytes": text, "length": tf.strings.length(text)}

    fn = echo.get_concrete_function()

    def signature(**inputs):
        return fn(**inputs)

    signature.structured_input_signature = ((), {"text": tf.TensorSpec([None], tf.string)})
    answer = rest.predict(signature, {"instances": [{"b64": base64.b64encode(b"\x00\xff").decode()}]})
    assert answer == {"predictions": [{"echo_bytes": {"b64": "AP8="}, "length": 2}]}


_GOLDEN = os.path.join(_HERE, "golden", "saved_model_cli_unet_uint8.txt")


def test_saved_model_cli_shows_the_golden_signatures(exported):
    _, base = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", str(base / "unet" / "1"), "--all"],
                          capture_output=True, text=True, timeout=120, env=_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = proc.stdout.split("The MetaGraph with tag set")[0].strip()  # then a set of ops
    with open(_GOLDEN) as f:
        assert shown == f.read().strip()


def _request(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_local_server_speaks_the_rest_api_on_loopback(exported):
    import threading

    unet, base = exported
    server = rest.ModelServer(base / "unet", "unet", host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/unet"
        status, body = _request(url)
        assert status == 200 and body["model_version_status"][0]["version"] == "1"
        assert body["model_version_status"][0]["state"] == "AVAILABLE"
        x = _pixels((1, 8, 8, 3), seed=4)
        status, body = _request(url + ":predict", {"instances": x.tolist()})
        assert status == 200
        np.testing.assert_allclose(body["predictions"][0]["probabilities"],
                                   unet(x.astype("float32") / 255.0)[0], atol=1e-5)
        status, body = _request(url + "/versions/1:predict", {"inputs": {"image": x.tolist()}})
        assert status == 200 and sorted(body["outputs"]) == ["mask", "probabilities"]
        status, body = _request(url + "/metadata")
        inputs = body["metadata"]["signature_def"]["serving_default"]["inputs"]
        assert inputs == {"image": {"dtype": "uint8", "shape": [None, None, None, 3]}}
        status, body = _request(url + "/versions/7:predict", {"instances": x.tolist()})
        assert status == 404 and "error" in body
        status, body = _request(url + ":predict", {"signature_name": "nope", "instances": []})
        assert status == 400 and "nope" in body["error"]
        status, body = _request(url.replace("unet", "half") + ":predict", {"instances": [1.0]})
        assert status == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_server_needs_a_versioned_folder(tmp_path):
    with pytest.raises(ValueError, match="base_path"):
        rest.ModelServer(tmp_path, "m", port=0)
