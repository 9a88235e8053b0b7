"""`model.fit` that survives being killed, and that runs under multi-worker strategies.

`fit` adds two callbacks to `model.fit`: `keras.callbacks.BackupAndRestore`, which saves the
weights, the optimizer state and the epoch count at the end of every epoch and, when the same
command is started again after a crash or a kill, restores them and continues with the next
epoch; and (optionally) `keras.callbacks.ModelCheckpoint`, which writes a `.keras` model
after each epoch (or only the best one).

A run killed in the middle of epoch `e` resumes at the start of epoch `e`, from the state saved
after epoch `e - 1`: the partial epoch is done again. With deterministic ops
(`tf.config.experimental.enable_op_determinism()`) and data whose order depends only on the
epoch (not shuffled, or shuffled with `reshuffle_each_iteration=False`), the resumed run ends
with exactly the weights of an uninterrupted one.
"""

import os

import keras
import tensorflow as tf

from kcv import _compat


def _is_multi_worker(strategy):
    """A `MultiWorkerMirroredStrategy` over several workers: the `chief` and `worker` tasks of
    its public `cluster_resolver` (read from `TF_CONFIG` unless another resolver was given)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")) > 1


def _mean_over_replicas(strategy, outputs):
    return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)


def _use_multi_worker_step(model, strategy):
    """Keras 3 `fit` fails under `MultiWorkerMirroredStrategy` with several workers
    (keras-team/keras#20585): its symbolic build calls `strategy.reduce` on a tuple, and its
    train step reduces scalar logs with `axis=0`. This builds what the symbolic build would
    (optimizer variables) inside the strategy, leaves the strategy to the surrounding
    `strategy.scope()` (so the broken build is skipped), and gives the model train/test
    functions that run Keras' own `train_step`/`test_step` on every replica and average the
    scalar logs."""
    if not model.optimizer.built:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    _compat.detach_distribute_strategy(model)  # see the docstring
    model._kcv_multi_worker_strategy = strategy

    @tf.function
    def train_function(iterator):
        return _mean_over_replicas(strategy, strategy.run(model.train_step, args=(next(iterator),)))

    @tf.function
    def test_function(iterator):
        return _mean_over_replicas(strategy, strategy.run(model.test_step, args=(next(iterator),)))

    model.train_function = train_function
    model.test_function = test_function


def fit(model, x=None, y=None, *, backup_dir=None, checkpoint_dir=None, save_best_only=False,
        monitor="val_loss", callbacks=None, **kwargs):
    """`model.fit` with backup-and-resume and per-epoch checkpoints.

    Args:
        model: a compiled `keras.Model` (built: call it once, or give it an `Input`).
        x, y: training data, as for `model.fit`.
        backup_dir: folder of the resumable state (weights, optimizer, epoch). When the
            process dies, run the same call again: training resumes after the last finished
            epoch. Deleted when training completes. `None` disables it.
        checkpoint_dir: when given, a `.keras` model is written there after each epoch as
            `epoch_{epoch:03d}.keras` (or only `best.keras` with `save_best_only`).
        save_best_only: keep only the best model by `monitor`.
        monitor: quantity compared by `save_best_only`.
        callbacks: more callbacks, run after the backup callback.
        **kwargs: passed to `model.fit` (`epochs`, `validation_data`, `batch_size`, ...).

    Returns:
        The `History` of this call (the epochs run by this process).

    Under a multi-worker `MultiWorkerMirroredStrategy` (the model was built in its scope),
    `fit` works around keras-team/keras#20585 so that `model.fit` runs; every worker must call
    it, and each needs its own `backup_dir` (e.g. suffixed with the task index).

    Example:
        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 1), "float32")
        >>> history = fit(model, x, y, epochs=2, verbose=0, backup_dir="runs/a/backup",
        ...               checkpoint_dir="runs/a/ckpt")
        >>> sorted(os.listdir("runs/a/ckpt")), os.path.exists("runs/a/backup")
        (['epoch_001.keras', 'epoch_002.keras'], False)

    Reference:
        Keras `BackupAndRestore` (fault-tolerant training) and `ModelCheckpoint`.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={type(model).__name__}")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("`model` must be compiled before `fit` (`model.compile(optimizer, "
                         "loss)`).")
    if not model.built:
        raise ValueError("`model` must be built before `fit` so that a backup can be restored "
                         "into it: call it on a batch or build it with `keras.Input`.")
    for name, value in (("backup_dir", backup_dir), ("checkpoint_dir", checkpoint_dir)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"`{name}` must be a path or None. Received: {name}={value!r}")
    own = []
    if backup_dir is not None:
        own.append(keras.callbacks.BackupAndRestore(os.fspath(backup_dir), save_freq="epoch",
                                                    delete_checkpoint=True))
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        name = "best.keras" if save_best_only else "epoch_{epoch:03d}.keras"
        own.append(keras.callbacks.ModelCheckpoint(os.path.join(os.fspath(checkpoint_dir), name),
                                                   monitor=monitor,
                                                   save_best_only=save_best_only))
    callbacks = own + list(callbacks or [])
    if isinstance(x, tf.data.Dataset):
        # A Dataset shuffles itself; Keras ignores `shuffle` for it and warns when it is True.
        kwargs.setdefault("shuffle", False)
    strategy = getattr(model, "_kcv_multi_worker_strategy", None) or model.distribute_strategy
    if _is_multi_worker(strategy):
        _use_multi_worker_step(model, strategy)
        with strategy.scope():
            return model.fit(x, y, callbacks=callbacks, **kwargs)
    return model.fit(x, y, callbacks=callbacks, **kwargs)
