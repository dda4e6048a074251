"""Model zoo (no torchvision), input normalization inside the model, and feature taps.

hardenkit models take [0, 1] pixels: :func:`create_model` wraps a zoo architecture with its
normalization, and :func:`with_normalization` does the same for any network. Penultimate
features (the input of the last ``nn.Linear``) and named layers are read through forward
hooks, so user models work unchanged.

Example:
    >>> import torch
    >>> from hardenkit.models import FeatureExtractor, create_model, penultimate_features
    >>> _ = torch.manual_seed(0)
    >>> m = create_model("small-cnn", num_classes=10)
    >>> m(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> penultimate_features(m, torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 64])
    >>> with FeatureExtractor(m, layers=["block2"]) as fx:
    ...     logits, feats = fx(torch.rand(2, 3, 32, 32))
    >>> sorted(feats), tuple(feats["block2"].shape)
    (['block2', 'penultimate'], (2, 32, 8, 8))
"""

from __future__ import annotations

from .features import (
    PENULTIMATE,
    FeatureExtractor,
    find_last_linear,
    penultimate_features,
    prunable_layers,
    resolve_layer,
)
from .normalization import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Normalize,
    NormalizedModel,
    with_normalization,
)
from .registry import (
    MODELS,
    ModelFactory,
    NormalizationArg,
    build_model,
    create_model,
    list_models,
    load_factory,
)
from .zoo import VGG16BN, CifarCNN, PreActResNet18, ResNet18, SmallCNN

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MODELS",
    "PENULTIMATE",
    "VGG16BN",
    "CifarCNN",
    "FeatureExtractor",
    "ModelFactory",
    "NormalizationArg",
    "Normalize",
    "NormalizedModel",
    "PreActResNet18",
    "ResNet18",
    "SmallCNN",
    "build_model",
    "create_model",
    "find_last_linear",
    "list_models",
    "load_factory",
    "penultimate_features",
    "prunable_layers",
    "resolve_layer",
    "with_normalization",
]
