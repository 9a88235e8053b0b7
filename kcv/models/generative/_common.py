"""What the generative models share: sub-model (de)serialization, loss trackers, the gradient step
with loss scaling, and argument checks."""

import keras
import tensorflow as tf


def check_model(model, name, num_outputs=None):
    """A `keras.Model`, with `num_outputs` outputs when it is a functional one."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`{name}` must be a keras.Model. Received: {name}={model!r}")
    outputs = getattr(model, "outputs", None)
    if num_outputs is not None and outputs is not None and len(outputs) != num_outputs:
        raise ValueError(f"`{name}` must have {num_outputs} outputs. Received: {name} with "
                         f"{len(outputs)} outputs")
    return model


def serialize_models(config, **models):
    """`config` with each sub-model serialized (`keras.saving.serialize_keras_object`)."""
    return {**config, **{k: keras.saving.serialize_keras_object(m) for k, m in models.items()}}


def deserialize_models(config, *names):
    """A copy of `config` with the sub-models under `names` deserialized."""
    config = dict(config)
    for name in names:
        config[name] = keras.saving.deserialize_keras_object(config[name])
    return config


def mark_built(model, *sub_models):
    """Marks `model` built when its sub-models are (functional ones are), so that it saves its
    weights and reloads its optimizer state without a first call."""
    if all(m.built for m in sub_models):
        model.built = True


def loss_trackers(*names):
    """`{name: keras.metrics.Mean(name)}` for the losses a `train_step` logs."""
    return {name: keras.metrics.Mean(name=name) for name in names}


def update_trackers(trackers, values):
    """Updates each tracker with its value; returns `{name: running mean}` for the logs."""
    for name, tracker in trackers.items():
        tracker.update_state(values[name])
    return {name: tracker.result() for name, tracker in trackers.items()}


def optimizer_for(model, optimizer):
    """`optimizer` (an instance or identifier) wrapped for loss scaling under `mixed_float16`,
    as `Model.compile` does for a model's single optimizer."""
    optimizer = keras.optimizers.get(optimizer)
    if (model.dtype_policy.name == "mixed_float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def minimize(optimizer, tape, scaled_loss, variables):
    """One optimizer step on `scaled_loss = optimizer.scale_loss(loss)`, computed on `tape`
    (`scale_loss` is the identity without loss scaling; `apply_gradients` unscales)."""
    grads = tape.gradient(scaled_loss, variables)
    optimizer.apply_gradients(zip(grads, variables))


def as_float32(*tensors):
    return [tf.cast(t, tf.float32) for t in tensors]


def _adam():
    """Adam(2e-4, beta_1=0.5), the optimizer of DCGAN (Radford et al. 2016) and CycleGAN."""
    return keras.optimizers.Adam(2e-4, beta_1=0.5)


class AdversarialModel(keras.Model):
    """A model trained with two optimizers, one for its generator(s), one for its
    discriminator(s). Subclasses define `generator_variables` and `discriminator_variables`."""

    def compile(self, generator_optimizer=None, discriminator_optimizer=None, **kwargs):
        """Configures training.

        Args:
            generator_optimizer: optimizer (instance or identifier) of the generator weights;
                default Adam(2e-4, beta_1=0.5) as in DCGAN and CycleGAN.
            discriminator_optimizer: the same for the discriminator weights.
            **kwargs: `keras.Model.compile` arguments (`run_eagerly`, `jit_compile`, ...);
                `optimizer` and `loss` are not taken: the losses are fixed by the model.
        """
        for key in ("optimizer", "loss"):
            if key in kwargs:
                raise TypeError(f"{type(self).__name__}.compile takes `generator_optimizer` and "
                                f"`discriminator_optimizer`, not `{key}`. Received: "
                                f"{key}={kwargs[key]!r}")
        self.generator_optimizer = optimizer_for(self, generator_optimizer or _adam())
        self.discriminator_optimizer = optimizer_for(self, discriminator_optimizer or _adam())
        super().compile(optimizer=self.generator_optimizer, **kwargs)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {"generator_optimizer": keras.optimizers.serialize(self.generator_optimizer),
                "discriminator_optimizer":
                    keras.optimizers.serialize(self.discriminator_optimizer)}

    def compile_from_config(self, config):
        self.compile(**{k: keras.optimizers.deserialize(v) for k, v in config.items()})
        if self.built:  # so that the optimizers' saved state loads, as Model does for its own
            self.generator_optimizer.build(self.generator_variables)
            self.discriminator_optimizer.build(self.discriminator_variables)
