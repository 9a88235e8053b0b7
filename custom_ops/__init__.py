"""custom_ops: stateless TensorFlow ops with hand-written gradients (no Keras)."""
