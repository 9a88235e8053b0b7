"""torchvision's `BalancedPositiveNegativeSampler`, batched, with stateless (seeded) randomness."""

import numbers

import tensorflow as tf


def first_true_indices(mask, size):
    """Indices of the first `size` True entries of each row, in index order, padded.

    Args:
        mask: bool Tensor `[B, N]`.
        size: Python int, the output width.

    Returns:
        `(indices, valid)`: int32 `[B, size]` (0 where padded) and bool `[B, size]`.

    Example:
        >>> idx, valid = first_true_indices(tf.constant([[False, True, False, True]]), 3)
        >>> idx.numpy(), valid.numpy()
        (array([[1, 3, 0]], dtype=int32), array([[ True,  True, False]]))
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    n = tf.shape(mask)[1]
    k = size if mask.shape[1] is None else min(size, mask.shape[1])
    score = tf.where(mask, n - tf.range(n)[None], 0)  # earlier True entries score higher
    values, indices = tf.math.top_k(score, k=k)
    valid = values > 0
    indices = tf.where(valid, indices, 0)
    if k < size:
        indices = tf.pad(indices, [[0, 0], [0, size - k]])
        valid = tf.pad(valid, [[0, 0], [0, size - k]])
    return indices, valid


def _mix(x):
    """A 32-bit integer hash (C. Wellons' "lowbias32"), uint32 -> uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def random_keys(shape, seed):
    """Stateless pseudo-random non-negative int32 keys `[B, N]` from a `[2]` or `[B, 2]` seed.

    A counter-based hash of `(seed, position)`: the same numbers eagerly, in `tf.function` and
    under XLA, on every device (`tf.random.stateless_uniform` differs between TensorFlow's
    kernels and XLA's). With one seed per row (`[B, 2]`) the position is the column, so a row's
    keys depend only on its own seed, not on where the row sits in the batch.
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.uint32)
    if seed.shape.rank == 2:
        counter = tf.broadcast_to(tf.cast(tf.range(shape[1]), tf.uint32)[None], shape)
        first, second = seed[:, :1], seed[:, 1:]
    else:
        counter = tf.cast(tf.reshape(tf.range(tf.reduce_prod(shape)), shape), tf.uint32)
        first, second = seed[0], seed[1]
    x = _mix(_mix(tf.bitwise.bitwise_xor(counter, _mix(first))) + second)
    return tf.cast(tf.bitwise.right_shift(x, 1), tf.int32)


def image_seeds(seed, batch_size):
    """One sampler seed per image, `[B, 2]`, from a step's `[2]` seed and the image's place.

    The place is the image's index in the global batch: under `tf.distribute` a replica holds
    the `replica_id`-th slice of `batch_size` images (MirroredStrategy splits a batch evenly),
    so each image draws the same anchors and RoIs as it does on one device.

    Args:
        seed: int Tensor `[2]`.
        batch_size: the images in this replica's batch (int or scalar int32 Tensor).

    Returns:
        int32 `[B, 2]`: `(seed[0], seed[1] + global index)` per image.

    Example:
        >>> image_seeds([5, 10], 3).numpy()
        array([[ 5, 10],
               [ 5, 11],
               [ 5, 12]], dtype=int32)
    """
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    index = tf.cast(replica, tf.int32) * batch_size + tf.range(batch_size)
    return tf.stack([tf.fill(tf.shape(index), seed[0]), seed[1] + index], axis=-1)


def _take_random(candidates, count, k, keys):
    """Mask of `count` random entries (per row) among `candidates`; `k` >= max `count`."""
    batch, n = tf.shape(candidates)[0], tf.shape(candidates)[1]
    keys = tf.where(candidates, keys, -1)
    _, top = tf.math.top_k(keys, k=k)  # candidates first, in random order
    chosen = tf.range(k)[None] < count[:, None]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(top))
    hits = tf.scatter_nd(tf.stack([rows, top], axis=-1), tf.cast(chosen, tf.int32),
                         tf.stack([batch, n]))
    return hits > 0


class BalancedPositiveNegativeSampler:
    """Samples a fixed budget of positives and negatives per image, as torchvision.

    Per image: `num_pos = min(#positives, int(batch_size_per_image * positive_fraction))`,
    `num_neg = min(#negatives, batch_size_per_image - num_pos)`, each drawn uniformly without
    replacement (so 128 + 128 anchors for RPN when there are >= 128 positives; otherwise all
    positives and negatives filling the rest). The randomness is stateless: the same `seed`
    gives the same sample eagerly, in `tf.function` and under XLA, on every device
    (`random_keys`).

    Args:
        batch_size_per_image: items sampled per image (256 for RPN, 512 for the RoI head).
        positive_fraction: at most this fraction positive (0.5 for RPN, 0.25 for the RoI head).

    Call arguments:
        labels: int Tensor `[B, N]`: `>= 1` positive, `0` negative, `< 0` ignored.
        seed: int Tensor `[2]` (e.g. drawn from a `keras.random.SeedGenerator` per step), or
            `[B, 2]`, one per image (`image_seeds`).

    Returns:
        `(positive, negative)`: bool Tensors `[B, N]`, the sampled items.

    Example:
        >>> sampler = BalancedPositiveNegativeSampler(4, 0.5)
        >>> pos, neg = sampler(tf.constant([[1, 1, 1, 0, 0, 0, -1]]), seed=[0, 1])
        >>> int(tf.reduce_sum(tf.cast(pos, tf.int32))), int(tf.reduce_sum(tf.cast(neg, tf.int32)))
        (2, 2)

    Reference:
        torchvision.models.detection._utils.BalancedPositiveNegativeSampler; Ren et al.,
        "Faster R-CNN", NeurIPS 2015 (section 3.1.3).
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        if (isinstance(batch_size_per_image, bool)
                or not isinstance(batch_size_per_image, numbers.Integral)
                or batch_size_per_image < 1):
            raise ValueError("`batch_size_per_image` must be a positive int. "
                             f"Received: batch_size_per_image={batch_size_per_image!r}")
        if (isinstance(positive_fraction, bool) or not isinstance(positive_fraction, numbers.Real)
                or not 0.0 <= positive_fraction <= 1.0):
            raise ValueError("`positive_fraction` must be in [0, 1]. "
                             f"Received: positive_fraction={positive_fraction!r}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels, seed):
        with tf.name_scope("balanced_sampler"):
            labels = tf.convert_to_tensor(labels)
            if labels.shape.rank != 2:
                raise ValueError(f"`labels` must be [B, N]. Received: labels.shape={labels.shape}")
            n_static = labels.shape[1]
            positive, negative = labels >= 1, tf.equal(labels, 0)
            max_pos = int(self.batch_size_per_image * self.positive_fraction)
            num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_pos)
            num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1),
                                 self.batch_size_per_image - num_pos)
            keys = random_keys(tf.shape(labels), seed)
            k_pos, k_neg = max_pos, self.batch_size_per_image
            if n_static is not None:
                k_pos, k_neg = min(k_pos, n_static), min(k_neg, n_static)
            pos = (_take_random(positive, num_pos, k_pos, keys) if k_pos > 0
                   else tf.zeros_like(positive))
            neg = _take_random(negative, num_neg, k_neg, keys)
            return pos, neg
