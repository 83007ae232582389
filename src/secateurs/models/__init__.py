"""The model zoo: plain, fx-traceable `nn.Module`s built by name for a data set's input shape.

`build_model("resnet20", (3, 32, 32), 10, seed=0)` checks the shape and options against the
model's `ModelSpec`, builds it, and draws its weights from `seed` alone.
"""

from __future__ import annotations

from secateurs.models import cnn1d, convnets, lenet, mlp, resnet, vgg
from secateurs.models._spec import MODELS, ModelSpec, register_model
from secateurs.models.build import build_model
from secateurs.models.init import init_weights, reinitialize

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "cnn1d",
    "convnets",
    "init_weights",
    "lenet",
    "mlp",
    "register_model",
    "reinitialize",
    "resnet",
    "vgg",
]
