"""TF Serving's REST predict API, mapped onto a SavedModel signature, and a small local server.

TensorFlow Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) takes a JSON
body `{"signature_name": ..., "instances": [...]}` (row format: one entry per example; for
several named inputs each entry is an object of name -> value) or `{"inputs": ...}` (columnar:
one tensor, or an object of name -> tensor), never both. Binary strings are sent as
`{"b64": "<base64>"}`. A row request is answered `{"predictions": ...}` (a list of values for a
single named output, otherwise a list of objects, one per example), a columnar one
`{"outputs": ...}` (the tensor for a single output, otherwise an object of name -> tensor).
Output tensors whose name ends in `_bytes` are sent back as `{"b64": ...}`.

`predict` implements that mapping for a loaded signature, so that an export can be tried
without the TF Serving binary; `serve` answers it over HTTP (standard library only) at
`/v1/models/<name>[/versions/<n>]:predict` and the model status/metadata URLs. It needs
TensorFlow and NumPy only: it serves a SavedModel in a process that cannot import kcv.
"""

import base64
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


class RequestError(ValueError):
    """A request TF Serving would refuse (answered with HTTP 400 and `{"error": ...}`)."""


def _decode(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise RequestError(f"A JSON object inside a tensor must be {{\"b64\": ...}}; got "
                               f"keys {sorted(value)}.")
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _tensor(value, spec, name):
    dtype = spec.dtype.as_numpy_dtype if spec.dtype != tf.string else object
    try:
        array = np.array(_decode(value), dtype=dtype)
    except (TypeError, ValueError) as err:
        raise RequestError(f"Input {name!r} cannot be read as {spec.dtype.name}: {err}") from None
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"Input {name!r} has shape {list(array.shape)}; the signature takes "
                           f"{spec.shape.as_list()}.")
    return tf.constant(array, dtype=spec.dtype)


def signature_inputs(signature):
    """`{name: tf.TensorSpec}` of a loaded signature's inputs."""
    return dict(signature.structured_input_signature[1])


def _inputs(body, specs):
    if "instances" in body and "inputs" in body:
        raise RequestError("A request can have either \"instances\" or \"inputs\", not both.")
    names = sorted(specs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise RequestError("\"instances\" must be a list, one entry per example.")
        if len(names) == 1:
            columns = {names[0]: [row[names[0]] if isinstance(row, dict) and "b64" not in row
                                  else row for row in rows]}
        else:
            if not all(isinstance(row, dict) for row in rows):
                raise RequestError(f"With several named inputs ({names}) each instance must "
                                   "be an object of input name -> value.")
            columns = {name: [row[name] for row in rows] for name in names}
        return columns, "row"
    if "inputs" not in body:
        raise RequestError("The request needs \"instances\" (row format) or \"inputs\" "
                           "(columnar format).")
    value = body["inputs"]
    if isinstance(value, dict) and "b64" not in value:
        return value, "columnar"
    if len(names) != 1:
        raise RequestError(f"The signature has inputs {names}: \"inputs\" must name them.")
    return {names[0]: value}, "columnar"


def _encode(name, array):
    array = np.asarray(array)
    if name.endswith("_bytes"):
        flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    if array.dtype == object:
        return np.vectorize(lambda v: v.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def predict(signature, body):
    """Answers a TF Serving REST predict body with a loaded SavedModel signature.

    Args:
        signature: a concrete function from `tf.saved_model.load(path).signatures[name]`.
        body: the request as a dict (the parsed JSON), in row (`instances`) or columnar
            (`inputs`) format; `signature_name` is not read here (the caller picks the
            signature).

    Returns:
        The response as a dict: `{"predictions": ...}` for a row request,
        `{"outputs": ...}` for a columnar one (see the module docstring).

    Raises:
        RequestError: the body does not fit the format or the signature.

    Example:
        >>> import keras, export
        >>> half_plus_three = keras.Sequential([keras.Input(()), keras.layers.Rescaling(0.5, 3.0)])
        >>> path = export.to_saved_model(half_plus_three, "half_plus_three/1")
        >>> fn = tf.saved_model.load(path).signatures["serving_default"]
        >>> predict(fn, {"instances": [1.0, 2.0, 5.0]})
        {'predictions': [3.5, 4.0, 5.5]}
    """
    specs = signature_inputs(signature)
    columns, layout = _inputs(body, specs)
    unknown = sorted(set(columns) - set(specs))
    missing = sorted(set(specs) - set(columns))
    if unknown or missing:
        raise RequestError(f"The signature takes inputs {sorted(specs)}; the request gave "
                           f"{sorted(columns)}.")
    tensors = {name: _tensor(value, specs[name], name) for name, value in columns.items()}
    try:
        outputs = signature(**tensors)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
        raise RequestError(" ".join(str(err).split())[:500]) from None
    names = sorted(outputs)
    if layout == "columnar":
        if len(names) == 1:
            return {"outputs": _encode(names[0], outputs[names[0]])}
        return {"outputs": {name: _encode(name, outputs[name]) for name in names}}
    encoded = {name: _encode(name, outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": encoded[names[0]]}
    sizes = {len(value) if isinstance(value, list) else None for value in encoded.values()}
    if len(sizes) != 1 or None in sizes:
        raise RequestError("The outputs do not share a 0-th (batch) dimension; use the "
                           "columnar (\"inputs\") format.")
    rows = next(iter(sizes))
    return {"predictions": [{name: encoded[name][i] for name in names} for i in range(rows)]}


def _versions(base_path):
    if not os.path.isdir(base_path):
        return []
    return sorted(int(d) for d in os.listdir(base_path)
                  if d.isdigit() and os.path.isfile(os.path.join(base_path, d, "saved_model.pb")))


_URL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                  r"(?P<verb>:predict|/metadata)?$")


class _Handler(BaseHTTPRequestHandler):
    server_version = "kcv-serve"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _reply(self, status, payload):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        match = _URL.match(self.path)
        if match is None or match["name"] != self.server.model_name:
            return None, None, {"error": f"Servable not found for request: {self.path}"}
        versions = _versions(self.server.base_path)
        version = int(match["version"]) if match["version"] else (versions[-1] if versions
                                                                    else None)
        if version not in versions:
            return None, None, {"error": f"Servable not found for request: version {version} "
                                f"of {match['name']} (available: {versions})"}
        return match, version, None

    def do_GET(self):  # noqa: N802 - http.server's name
        match, version, error = self._route()
        if error is not None:
            return self._reply(404, error)
        if match["verb"] == "/metadata":
            model = self.server.model(version)
            signatures = {key: {"inputs": {name: {"dtype": spec.dtype.name,
                                                  "shape": spec.shape.as_list()}
                                           for name, spec in signature_inputs(fn).items()},
                                "outputs": {name: {"dtype": spec.dtype.name,
                                                   "shape": spec.shape.as_list()}
                                            for name, spec in fn.structured_outputs.items()}}
                          for key, fn in model.signatures.items()}
            return self._reply(200, {"model_spec": {"name": match["name"],
                                                    "version": str(version)},
                                     "metadata": {"signature_def": signatures}})
        shown = [version] if match["version"] else _versions(self.server.base_path)
        return self._reply(200, {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in shown]})

    def do_POST(self):  # noqa: N802 - http.server's name
        match, version, error = self._route()
        if error is not None:
            return self._reply(404, error)
        if match["verb"] != ":predict":
            return self._reply(404, {"error": f"Unsupported request: POST {self.path}"})
        try:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise RequestError("The request body must be a JSON object.")
            model = self.server.model(version)
            name = body.get("signature_name", DEFAULT_SIGNATURE)
            if name not in model.signatures:
                raise RequestError(f"Serving signature name: \"{name}\" not found in signature "
                                   f"def (available: {sorted(model.signatures)})")
            with self.server.lock:
                answer = predict(model.signatures[name], body)
        except (RequestError, json.JSONDecodeError) as err:
            return self._reply(400, {"error": str(err)})
        return self._reply(200, answer)


class ModelServer(ThreadingHTTPServer):
    """An HTTP server answering TF Serving's REST API for one model's versioned folder.

    Args:
        base_path: the model's folder holding numbered versions (`exports/unet` with `1/`).
        model_name: the `<name>` of the URLs.
        host: address to listen on (default `127.0.0.1`: this machine only).
        port: port (0 picks a free one; `server.server_address[1]` tells which).
        verbose: log each request to stderr.
    """

    daemon_threads = True

    def __init__(self, base_path, model_name, host="127.0.0.1", port=8501, verbose=False):
        self.base_path = os.fspath(base_path)
        if not _versions(self.base_path):
            raise ValueError(f"`base_path` must hold numbered SavedModel versions (e.g. "
                             f"{os.path.join(self.base_path, '1')}/saved_model.pb). Received: "
                             f"base_path={self.base_path!r}")
        self.model_name = model_name
        self.verbose = verbose
        self.lock = threading.Lock()
        self._models = {}
        super().__init__((host, port), _Handler)

    def model(self, version):
        if version not in self._models:
            self._models[version] = tf.saved_model.load(
                os.path.join(self.base_path, str(version)))
        return self._models[version]


def serve(base_path, model_name, host="127.0.0.1", port=8501, verbose=True, ready=None):
    """Serves a versioned SavedModel folder over TF Serving's REST API until interrupted.

    Args:
        base_path, model_name, host, port, verbose: as `ModelServer`.
        ready: optional `fn(server)` called once the server listens (e.g. to print its URL).
    """
    server = ModelServer(base_path, model_name, host=host, port=port, verbose=verbose)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
