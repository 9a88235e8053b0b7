"""Graph checks on functional models, shared by the segmentation model tests.

`dropouts_reaching_batch_norm(model)` states the rule of Li et al., "Understanding the Disharmony
between Dropout and Batch Normalization by Variance Shift" (CVPR 2019), on the layer graph:

- a *dropout* is a `keras.layers.Dropout` (any subclass, e.g. SpatialDropout2D), or a layer
  whose config has `dropout > 0` (kcv's `ASPP` drops out at its end), or a nested model
  holding one of those;
- a *batch norm* is a `keras.layers.BatchNormalization`, a kcv block with `norm="batch"` in
  its config (`ConvBNAct`, `BasicBlock`, `ASPP`, ...), or a nested model holding one;
- a dropout *reaches* a batch norm when a directed path of layers leads from the dropout's
  output to the batch norm's input (through any layers: a convolution in between does not
  undo the variance shift, it only mixes it).

The rule holds when no dropout reaches a batch norm.
"""

import keras

from kcv.utils.surgery import _source_names


def _is_dropout(layer):
    if isinstance(layer, keras.layers.Dropout):
        return True
    if isinstance(layer, keras.Model):
        return any(_is_dropout(sub) for sub in layer.layers)
    return (layer.get_config().get("dropout") or 0) > 0


def _is_batch_norm(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return True
    if isinstance(layer, keras.Model):
        return any(_is_batch_norm(sub) for sub in layer.layers)
    return layer.get_config().get("norm") == "batch"


def dropouts_reaching_batch_norm(model):
    """A dict: name of each dropout that reaches a batch norm -> the names of those it reaches."""
    children = {layer.name: [] for layer in model.layers}
    for entry in model.get_config()["layers"]:  # the wiring, as the model serializes it
        for parent in _source_names(entry):
            children[parent].append(model.get_layer(entry["config"]["name"]))
    found = {}
    for source in model.layers:
        if not _is_dropout(source):
            continue
        seen, todo, reached = set(), list(children[source.name]), []
        while todo:
            layer = todo.pop()
            if layer.name in seen:
                continue
            seen.add(layer.name)
            if _is_batch_norm(layer):
                reached.append(layer.name)
            todo += children[layer.name]
        if reached:
            found[source.name] = sorted(reached)
    return found
