"""HRNet (Sun et al., 2019) with the HRNetV2 segmentation head, as a Keras functional model."""

import keras

from kcv.layers import BasicBlock, Bottleneck, ConvBNAct
from kcv.layers._checks import check_positive_int
from kcv.models._blocks import output_activation_layer
from kcv.models._checks import check_input_shape


def _fuse(branches, widths, name):
    """The exchange unit: every output resolution r sums all input branches s, brought to r.

    Same resolution: copied. Lower resolution (s > r): 1x1 convolution + BN (a `ConvBNAct`
    named `<name>_<s>to<r>`) to r's channels, then bilinear upsampling by 2**(s - r). Higher
    resolution (s < r): r - s strided 3x3 convolutions + BN (`<name>_<s>to<r>_down<k>`, ReLU
    between them). The sum goes through a ReLU.
    """
    outputs = []
    for r, width in enumerate(widths):
        terms = []
        for s, x in enumerate(branches):
            path = f"{name}_{s}to{r}"
            if s == r:
                terms.append(x)
            elif s > r:
                y = ConvBNAct(width, 1, activation=None, name=path)(x)
                terms.append(keras.layers.UpSampling2D(2 ** (s - r), interpolation="bilinear",
                                                       name=f"{path}_up")(y))
            else:
                y = x
                for k in range(r - s):
                    last = k == r - s - 1
                    y = ConvBNAct(width if last else widths[s], 3, strides=2,
                                  activation=None if last else "relu",
                                  name=f"{path}_down{k + 1}")(y)
                terms.append(y)
        total = keras.layers.Add(name=f"{name}_sum{r}")(terms) if len(terms) > 1 else terms[0]
        outputs.append(keras.layers.ReLU(name=f"{name}_out{r}")(total))
    return outputs


def HRNet(input_shape, num_classes, width=18, num_modules=(1, 1, 4, 3), num_blocks=4,
          stem_filters=64, output_activation="auto", name="hrnet"):
    """Builds HRNetV2: parallel resolutions kept from start to end, exchanging information.

    A stem of two stride-2 3x3 convolutions brings the image to 1/4 resolution; stage 1 holds
    `num_blocks` bottleneck blocks (`kcv.layers.Bottleneck`). Each later stage adds a branch at
    half the lowest resolution (a strided 3x3 convolution of the lowest branch), so stage 4
    runs four branches at 1/4, 1/8, 1/16 and 1/32 with `width * (1, 2, 4, 8)` channels. A stage
    is `num_modules[t]` modules; a module runs `num_blocks` basic residual blocks
    (`kcv.layers.BasicBlock`) on every branch and then fuses them in the paper's exchange unit:
    the same resolution is copied, a lower one goes through a 1x1 convolution and bilinear
    upsampling, a higher one through strided 3x3 convolutions, and the terms are summed. The
    HRNetV2 head upsamples all four branches to 1/4 resolution (bilinear), concatenates them,
    mixes them with a 1x1 convolution, classifies with a 1x1 convolution and upsamples
    bilinearly by 4 to the input size. Resizes have static factors, so the model converts to
    TFLite `RESIZE_BILINEAR` builtins. Every convolution is a `kcv.layers.ConvBNAct` (batch
    norm, epsilon 1e-3).

    Args:
        input_shape: `(H, W, C)`; H and W divisible by 32.
        num_classes: output channels (1 means binary segmentation).
        width: channels of the highest-resolution branch (HRNetV2-W18: 18, W32, W48).
        num_modules: modules in stages 1..4 (the paper: `(1, 1, 4, 3)`); stage 1 must be 1.
        num_blocks: residual blocks per branch in each module (the paper: 4).
        stem_filters: channels of the stem and of stage 1's bottlenecks (which output 4x).
        output_activation: `"auto"` (softmax, or sigmoid for one class), `None` for logits, or
            a Keras activation name; float32 under mixed precision.
        name: model name.

    Returns:
        A `keras.Model` from `[B, H, W, C]` to `[B, H, W, num_classes]`.

    Example:
        >>> model = HRNet((64, 64, 3), num_classes=19, width=18, num_modules=(1, 1, 1, 1),
        ...               num_blocks=1)  # HRNetV2-W18's branches, one module per stage
        >>> model.output.shape
        (None, 64, 64, 19)

    Reference:
        Sun, Xiao, Liu & Wang, "Deep High-Resolution Representation Learning for Human Pose
        Estimation", CVPR 2019; Sun et al., "High-Resolution Representations for Labeling
        Pixels and Regions" (HRNetV2), arXiv:1904.04514.
    """
    # === Validate ===
    check_positive_int("num_classes", num_classes)
    check_input_shape(input_shape, 32, "32 (the lowest branch runs at 1/32)", known=True)

    # === Functional Model ===
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    branches = hrnet_branches(inputs, width, num_modules, num_blocks, stem_filters)
    widths = [width * 2**k for k in range(4)]
    # HRNetV2 head: all resolutions upsampled to 1/4 and concatenated.
    features = [branches[0]] + [
        keras.layers.UpSampling2D(2**b, interpolation="bilinear", name=f"head_up{b}")(y)
        for b, y in enumerate(branches) if b
    ]
    x = keras.layers.Concatenate(name="head_concat")(features)
    x = ConvBNAct(sum(widths), 1, name="head_mix")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = keras.layers.UpSampling2D(4, interpolation="bilinear", name="upsample")(x)
    x = output_activation_layer(x, num_classes, output_activation)
    return keras.Model(inputs, x, name=name)


def _run_blocks(x, filters, num_blocks, name):
    for n in range(num_blocks):
        x = BasicBlock(filters, name=f"{name}_block{n + 1}")(x)
    return x


def hrnet_branches(inputs, width, num_modules, num_blocks, stem_filters):
    """HRNet's stem and stages 1-4 on `inputs`: the four branches at strides 4, 8, 16, 32 with
    `width * (1, 2, 4, 8)` channels (arguments as `HRNet`, checked here). Shared by the
    segmentation model (`HRNet`) and the pose model (`kcv.models.HRNetPose`)."""
    # === Validate ===
    for key, value in (("width", width),
                       ("num_blocks", num_blocks), ("stem_filters", stem_filters)):
        check_positive_int(key, value)
    modules = tuple(num_modules) if isinstance(num_modules, (list, tuple)) else ()
    if (len(modules) != 4 or modules[0] != 1
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in modules)):
        raise ValueError(
            "`num_modules` must be 4 positive ints (modules in stages 1..4) with 1 in stage 1. "
            f"Received: num_modules={num_modules!r}"
        )
    check_input_shape(tuple(inputs.shape[1:]), 32, "32 (the lowest branch runs at 1/32)",
                      known=True)
    widths = [width * 2**k for k in range(4)]

    x = ConvBNAct(stem_filters, 3, strides=2, name="stem1")(inputs)
    x = ConvBNAct(stem_filters, 3, strides=2, name="stem2")(x)
    for n in range(num_blocks):
        x = Bottleneck(stem_filters, name=f"stage1_block{n + 1}")(x)
    branches = [x]
    for stage in range(2, 5):
        count = stage  # branches in this stage
        # Transition: adapt the existing branches' channels, add one at half the lowest.
        new = []
        for b in range(count):
            if b < len(branches):
                y = branches[b]
                if y.shape[-1] != widths[b]:
                    y = ConvBNAct(widths[b], 3, name=f"transition{stage}_{b}")(y)
            else:
                y = ConvBNAct(widths[b], 3, strides=2,
                              name=f"transition{stage}_{b}")(branches[-1])
            new.append(y)
        branches = new
        for m in range(modules[stage - 1]):
            prefix = f"stage{stage}_m{m + 1}"
            branches = [
                _run_blocks(y, widths[b], num_blocks, f"{prefix}_b{b}")
                for b, y in enumerate(branches)
            ]
            branches = _fuse(branches, widths[:count], f"{prefix}_fuse")
    return branches
