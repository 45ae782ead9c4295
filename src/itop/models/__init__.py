"""The paper's networks, looked up by name: `create_model("vgg-c", num_classes=10)`.

Importing this package imports every family module, which registers its models. All models
return logits (the original returned log-softmax); class count and input size are arguments.
"""

from . import alexnet, lenet, mlp, resnet_cifar, resnet_imagenet, set_mlp, vgg, wide_resnet  # noqa: F401  (register)
from .registry import (
    ModelSpec,
    create_model,
    default_input_shape,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "create_model",
    "default_input_shape",
    "get_model_spec",
    "list_models",
    "register_model",
]
