"""Data: loader adapter and validation, in-memory datasets, sources, sampling, synthetic data.

Example:
    >>> from hardenkit.data import make_synthetic_dataset, stratified_indices
    >>> splits = make_synthetic_dataset(num_classes=3, train_per_class=10, test_per_class=2)
    >>> idx = stratified_indices(splits.train.labels, fraction=0.2)
    >>> len(idx)
    6
"""

from .datasets import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    TensorLoader,
    from_arrays,
    load_image_archive,
    load_image_folder,
    to_float_pixels,
)
from .loaders import BatchSource, iter_batches, materialize, validate_batch
from .poisoned import PoisonedDataset
from .sampling import balanced_subsample, stratified_indices, stratified_split
from .synthetic import SyntheticSplits, make_synthetic_dataset, synthetic_prototypes

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchSource",
    "ImageDataset",
    "PoisonedDataset",
    "SyntheticSplits",
    "TensorLoader",
    "balanced_subsample",
    "from_arrays",
    "iter_batches",
    "load_image_archive",
    "load_image_folder",
    "make_synthetic_dataset",
    "materialize",
    "stratified_indices",
    "stratified_split",
    "synthetic_prototypes",
    "to_float_pixels",
    "validate_batch",
]
