"""The `>>>` examples in the docstrings of kcv.models and kcv.utils run and print what they show."""

import doctest
import importlib

import keras
import numpy as np
import pytest

import kcv

_MODULES = [
    "kcv.models.backbones.mobilenet",
    "kcv.models.backbones.resnet",
    "kcv.models.backbones.vgg",
    "kcv.models.segmentation.deeplab",
    "kcv.models.segmentation.hrnet",
    "kcv.models.segmentation.unet",
    "kcv.models.segmentation.unet_plus_plus",
    "kcv.utils.complexity",
    "kcv.utils.receptive_field",
    "kcv.utils.surgery",
]


@pytest.mark.parametrize("name", _MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"keras": keras, "kcv": kcv, "np": np},
                             optionflags=doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
