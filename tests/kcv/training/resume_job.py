"""Training job for test_fit.py (not collected by pytest).

Usage: python resume_job.py RUN_DIR [PAUSE_EPOCH PAUSE_BATCH]
Trains a small conv net for 4 epochs with kcv.training.fit (backup in RUN_DIR/backup,
checkpoints in RUN_DIR/ckpt), deterministic ops on. Appends every epoch it starts to
RUN_DIR/epochs.txt and saves the final weights to RUN_DIR/final_*.npy. With PAUSE_EPOCH and
PAUSE_BATCH it writes RUN_DIR/paused and sleeps there (mid-epoch) so the caller can SIGKILL it.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kcv.training import fit  # noqa: E402


class _Pause(keras.callbacks.Callback):
    def __init__(self, run_dir, epoch, batch):
        super().__init__()
        self.run_dir, self.epoch, self.batch, self.current = run_dir, epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            open(os.path.join(self.run_dir, "paused"), "w").close()
            time.sleep(120)


def main():
    run_dir = sys.argv[1]
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=(32, 8, 8)).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        32, seed=1, reshuffle_each_iteration=False).batch(4)
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(h))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    log = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: open(
        os.path.join(run_dir, "epochs.txt"), "a").write(f"{epoch}\n"))
    callbacks = [log]
    if len(sys.argv) > 3:
        callbacks.append(_Pause(run_dir, int(sys.argv[2]), int(sys.argv[3])))
    fit(model, ds, epochs=4, verbose=0, backup_dir=os.path.join(run_dir, "backup"),
        checkpoint_dir=os.path.join(run_dir, "ckpt"), callbacks=callbacks)
    for i, w in enumerate(model.get_weights()):
        np.save(os.path.join(run_dir, f"final_{i:02d}.npy"), np.asarray(w))


if __name__ == "__main__":
    main()
