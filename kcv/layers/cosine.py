"""Cosine classifier: cosine similarities between embeddings and class weight vectors."""

import keras
import tensorflow as tf

from kcv.layers._checks import check_positive_int


@keras.saving.register_keras_serializable(package="kcv")
class CosineClassifier(keras.layers.Layer):
    """Cosine similarity of each embedding to each of `num_classes` learned class vectors.

    Formula:
        `cos[b, j] = (x_b / |x_b|) . (W_j / |W_j|)`, with W `[D, num_classes]`; `|v|` is
        computed as `sqrt(max(sum v^2, epsilon))` (`tf.math.l2_normalize`), so a zero vector
        gives cosines 0, not NaN.

    The output is the input of the margin losses (`kcv.losses.AMSoftmaxLoss`,
    `kcv.losses.ArcFaceLoss`), which apply their margin and scale only in the loss: at
    inference the layer gives plain cosines, usable as class scores, and the layer before it
    (L2-normalised) is the embedding. Computed in float32 and returned in the compute dtype.

    Args:
        num_classes: number of classes (positive int).
        kernel_initializer: initializer of the class weights `[D, num_classes]`.
        kernel_regularizer: optional regularizer of the class weights.
        epsilon: lower bound of the squared norms (default 1e-12).
        **kwargs: base `keras.layers.Layer` arguments.

    Input shape: `[B, D]`. Output shape: `[B, num_classes]`, values in [-1, 1].

    Example:
        >>> layer = CosineClassifier(3)
        >>> layer(np.ones((2, 8), "float32")).shape
        TensorShape([2, 3])

    Reference:
        Wang, Cheng, Liu & Liu, "Additive Margin Softmax for Face Verification", IEEE Signal
        Processing Letters 2018; Deng et al., "ArcFace", CVPR 2019.
    """

    def __init__(self, num_classes, kernel_initializer="glorot_uniform", kernel_regularizer=None,
                 epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(f"`epsilon` must be a positive number. Received: epsilon={epsilon!r}")
        self.num_classes = num_classes
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.epsilon = epsilon

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError("CosineClassifier expects embeddings [B, D] with D known. "
                             f"Received: input_shape={input_shape}")
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.num_classes),
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)

    def call(self, inputs):
        x = tf.math.l2_normalize(tf.cast(inputs, tf.float32), axis=-1, epsilon=self.epsilon)
        w = tf.math.l2_normalize(tf.cast(self.kernel, tf.float32), axis=0, epsilon=self.epsilon)
        return tf.cast(tf.matmul(x, w), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "epsilon": self.epsilon,
        }
