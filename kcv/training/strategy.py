"""Picks the `tf.distribute` strategy that fits the machine (and the cluster) it runs on.

Single machine, several devices: build and compile the model inside `strategy().scope()`, then
call `fit` as usual; each batch is split across the devices and the gradients are summed.

Multi-worker: start the same script on every machine with `TF_CONFIG` naming all workers and
this process's index, e.g. on two hosts (or two terminals of one, with `127.0.0.1`)::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' python train.py   # on host0
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 1}}' python train.py   # on host1

`strategy()` then returns a `MultiWorkerMirroredStrategy`; the batch size given to the dataset
is the global batch, split across all replicas of all workers; worker 0 (the chief) is the one
that should write checkpoints and the saved model (see `examples/distributed_training.py`).
"""

import json
import os

import tensorflow as tf


def _workers(tf_config):
    """Number of worker tasks (`chief` + `worker`) that `TF_CONFIG` names."""
    if not tf_config:
        return 0
    try:
        config = json.loads(tf_config)
    except json.JSONDecodeError as err:
        raise ValueError(f"`TF_CONFIG` is not valid JSON ({err}). Received: {tf_config!r}"
                         ) from None
    cluster = config.get("cluster", {}) if isinstance(config, dict) else {}
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def _tpu_present():
    """A TPU attached to this host or named by the environment (never probes the network)."""
    if tf.config.list_physical_devices("TPU"):
        return True
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def choose_strategy(num_workers, has_tpu, num_gpus, num_cpus):
    """The rule `strategy()` follows, as a name (kept apart so it can be read and tested).

    Args:
        num_workers: worker tasks named in `TF_CONFIG` (0 when unset).
        has_tpu: a TPU is attached or named.
        num_gpus: local logical GPUs.
        num_cpus: local logical CPU devices (more than 1 only when configured so).

    Returns:
        `"multi_worker"` when `TF_CONFIG` names several workers, else `"tpu"` when a TPU is
        present, else `"mirrored_gpu"` with several GPUs, else `"mirrored_cpu"` with several
        logical CPU devices (and no GPU), else `"default"`.
    """
    if num_workers > 1:
        return "multi_worker"
    if has_tpu:
        return "tpu"
    if num_gpus > 1:
        return "mirrored_gpu"
    if num_gpus == 0 and num_cpus > 1:
        return "mirrored_cpu"
    return "default"


def strategy():
    """Returns the `tf.distribute.Strategy` for this process.

    - `MultiWorkerMirroredStrategy` when the `TF_CONFIG` environment variable names more than
      one worker (synchronous all-reduce across machines; see the module docstring for how to
      launch it);
    - `TPUStrategy` when a TPU is attached or named by `TPU_NAME`/`COLAB_TPU_ADDR`;
    - `MirroredStrategy` over all local GPUs when there are several (or over the logical CPU
      devices when the CPU was split with `tf.config.set_logical_device_configuration` and
      there is no GPU);
    - the default strategy (one device) otherwise.

    Call it once at start-up, before building the model, and build and compile inside its
    `scope()`. `MultiWorkerMirroredStrategy` must be created before any other TF op runs.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: `TF_CONFIG` is not valid JSON.

    Example:
        >>> import keras, numpy as np
        >>> import kcv
        >>> strategy = kcv.training.strategy()  # one CPU, no TF_CONFIG: the default strategy
        >>> with strategy.scope():
        ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        ...     model.compile("adam", "mse")
        >>> history = model.fit(np.zeros((8, 4)), np.zeros((8, 1)), epochs=1, verbose=0)
        >>> strategy.num_replicas_in_sync
        1
    """
    num_workers = _workers(os.environ.get("TF_CONFIG", ""))
    if num_workers > 1:  # before listing devices: it must run before TF initialises them
        return tf.distribute.MultiWorkerMirroredStrategy()
    has_tpu = _tpu_present()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    choice = choose_strategy(num_workers, has_tpu, len(gpus), len(cpus))
    if choice == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "local" if not os.environ.get("COLAB_TPU_ADDR")
                               else "grpc://" + os.environ["COLAB_TPU_ADDR"]))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if choice == "mirrored_gpu":
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if choice == "mirrored_cpu":
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()
