"""Transformer layers: kcv encoder/decoder stacks vs a plain Keras MultiHeadAttention stack.

Both stacks have the same layout and weights count (post-LN, d_model 256, 4 heads, FFN 1024,
4 layers, batch 16, length 64; the decoder with causal self-attention and cross-attention);
the baseline is written inline from `keras.layers.MultiHeadAttention`, `LayerNormalization`
and `Dense` (keras-hub is not a dependency). Forward + backward in `tf.function`, interleaved
repeats, medians, in the same run. Also cached vs uncached greedy decoding of a small model.
Ratio = kcv time / baseline time (below 1 means kcv is faster).

Run: .venv/bin/python benchmarks/transformer.py [--quick]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kcv.layers import TransformerDecoderLayer, TransformerEncoderLayer  # noqa: E402
from kcv.models import Transformer, greedy_decode  # noqa: E402

D, HEADS, FF = 256, 4, 1024


def _plain_block(x, memory=None, causal=False):
    attn = keras.layers.MultiHeadAttention(HEADS, D // HEADS, dropout=0.1)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(
        x + keras.layers.Dropout(0.1)(attn(x, x, use_causal_mask=causal)))
    if memory is not None:
        cross = keras.layers.MultiHeadAttention(HEADS, D // HEADS, dropout=0.1)
        x = keras.layers.LayerNormalization(epsilon=1e-5)(
            x + keras.layers.Dropout(0.1)(cross(x, memory)))
    h = keras.layers.Dense(D)(keras.layers.Dropout(0.1)(keras.layers.Dense(FF, "relu")(x)))
    return keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.Dropout(0.1)(h))


def build(kind, layers, length):
    src = keras.Input((length, D))
    tgt = keras.Input((length, D))
    x, y = src, tgt
    for _ in range(layers):
        x = TransformerEncoderLayer(D, HEADS, FF)(x) if kind == "kcv" else _plain_block(x)
    for _ in range(layers):
        y = (TransformerDecoderLayer(D, HEADS, FF)(y, x) if kind == "kcv"
             else _plain_block(y, x, causal=True))
    return keras.Model([src, tgt], y)


def train_step_fn(model):
    @tf.function
    def step(src, tgt):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model([src, tgt], training=True)))
        return tape.gradient(loss, model.trainable_weights)
    return step


def median_times(fns, args, repeats):
    for fn in fns.values():
        fn(*args)  # trace
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            out = fn(*args)
            _ = [np.asarray(o) for o in out[:1]]
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    layers, length, batch = (1, 16, 4) if args.quick else (4, 64, 16)
    repeats = 2 if args.quick else args.repeats
    keras.utils.set_random_seed(0)
    kcv_model, plain = build("kcv", layers, length), build("plain", layers, length)
    assert kcv_model.count_params() == plain.count_params()
    rng = np.random.default_rng(0)
    src = tf.constant(rng.normal(size=(batch, length, D)).astype("float32"))
    tgt = tf.constant(rng.normal(size=(batch, length, D)).astype("float32"))
    t = median_times({"kcv": train_step_fn(kcv_model), "plain": train_step_fn(plain)},
                     (src, tgt), repeats)
    print(f"forward+backward, {layers}+{layers} layers, d={D}, batch {batch}, length {length}: "
          f"kcv {t['kcv'] * 1e3:.1f} ms, plain Keras MHA stack {t['plain'] * 1e3:.1f} ms, "
          f"ratio {t['kcv'] / t['plain']:.2f}")

    model = Transformer(40, 40, 64, d_model=128, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=2, dim_feedforward=256)
    tokens = rng.integers(3, 40, size=(8, 32)).astype("int32")
    out_len = 12 if args.quick else 48
    timings = {}
    for use_cache in (True, False):
        greedy_decode(model, tokens, 1, 2, 4, use_cache=use_cache)  # trace
        start = time.perf_counter()
        greedy_decode(model, tokens, 1, 40, out_len, use_cache=use_cache)  # end id never drawn
        timings[use_cache] = time.perf_counter() - start
    print(f"greedy decoding of {out_len} tokens, batch 8: cached {timings[True]:.2f} s, "
          f"uncached {timings[False]:.2f} s, ratio {timings[True] / timings[False]:.2f}")


if __name__ == "__main__":
    main()
