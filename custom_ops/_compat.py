"""The TensorFlow internals custom_ops reads, in one place (TensorFlow has no public API for them).

Two questions decide whether an op may run its internals as nested `jit_compile=True` programs
(see `custom_ops._context`):

* `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext(graph)`: is the graph being
  traced (or one enclosing it) compiled with XLA? The public `tf.function(jit_compile=True)`
  sets it, but nothing public reads it back.
* `tensorflow.python.saved_model.save_context.in_save_context()`: is `tf.saved_model.save`
  tracing the functions it exports? (The exported graph must keep portable builtin ops.)

Each accessor answers `True`/`False`, or `None` when the internal is gone (a TensorFlow upgrade
moved or renamed it); `custom_ops._context` turns `None` into the safe answer, so a missing
internal only makes ops slower, never wrong and never an error.

`PRIVATE_ATTRIBUTES` lists every internal read here; `tests/test_compat.py` checks that each one
still exists in the installed TensorFlow and names the one that does not.
"""

import importlib

# (owner, attribute, why): the owner is an importable module path.
PRIVATE_ATTRIBUTES = (
    ("tensorflow.python.ops.control_flow_util", "GraphOrParentsInXlaContext",
     "is the graph being traced compiled with XLA (nested jit_compile functions are skipped)"),
    ("tensorflow.python.saved_model.save_context", "in_save_context",
     "is tf.saved_model.save tracing (exports keep plain builtin ops)"),
)


def _internal(module, attribute):
    """`module.attribute`, or None when the module or the attribute no longer exists."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None


def _ask(index, *args):
    function = _internal(*PRIVATE_ATTRIBUTES[index][:2])
    if function is None:
        return None
    try:
        return bool(function(*args))
    except Exception:  # noqa: BLE001 - an internal that changed its signature: unknown
        return None


def graph_in_xla_context(graph):
    """True/False: `graph` (or a graph enclosing it) is compiled with XLA; None: unknown."""
    return _ask(0, graph)


def in_save_context():
    """True/False: `tf.saved_model.save` is tracing; None: unknown."""
    return _ask(1)
