"""Stratified sampling of clean subsets with a disjointness guarantee.

Example:
    >>> import torch
    >>> from hardenkit.data import stratified_indices
    >>> labels = torch.arange(100) % 10
    >>> idx = stratified_indices(labels, per_class=2, seed=0, exclude=torch.arange(50))
    >>> len(idx), bool((idx >= 50).all())
    (20, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["balanced_subsample", "stratified_indices", "stratified_split"]


def _as_index(t: Tensor | Sequence[int] | None) -> Tensor:
    if t is None:
        return torch.empty(0, dtype=torch.int64)
    return torch.as_tensor(t, dtype=torch.int64).flatten()


def stratified_indices(
    labels: Tensor,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
    exclude: Tensor | Sequence[int] | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """Pick a class-balanced random subset of indices (sorted), never from ``exclude``.

    Give exactly one of ``fraction`` (of *all* samples, spread over classes in proportion to
    their size — "5%" of CIFAR-10 is 2,500 images, 250 per class) or ``per_class``.
    Raises :class:`DataError` when a class has too few eligible samples.
    """
    if (fraction is None) == (per_class is None):
        raise DataError("Give exactly one of fraction= or per_class=.")
    if fraction is not None and not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1], got {fraction}.")
    if per_class is not None and per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}.")
    labels = labels.to("cpu", torch.int64)
    k = num_classes if num_classes is not None else int(labels.max()) + 1 if len(labels) else 0
    eligible = torch.ones(len(labels), dtype=torch.bool)
    ex = _as_index(exclude)
    if len(ex):
        eligible[ex[(ex >= 0) & (ex < len(labels))]] = False
    g = torch.Generator().manual_seed(seed)
    chosen: list[Tensor] = []
    for c in range(k):
        pool = torch.nonzero((labels == c) & eligible).flatten()
        total_c = int((labels == c).sum())
        want = per_class if per_class is not None else round(fraction * total_c)  # type: ignore[operator]
        if want == 0:
            continue
        if len(pool) < want:
            raise DataError(
                f"class {c} has {len(pool)} eligible samples, {want} were requested "
                f"({len(ex)} indices excluded).",
                hint="lower the fraction / per_class, or provide more clean data",
            )
        chosen.append(pool[torch.randperm(len(pool), generator=g)[:want]])
    if not chosen:
        raise DataError("the requested subset is empty; increase fraction or per_class.")
    return torch.sort(torch.cat(chosen)).values


def stratified_split(
    labels: Tensor, *, holdout_fraction: float, seed: int = 0, min_per_class: int = 1
) -> tuple[Tensor, Tensor]:
    """Split all indices into disjoint ``(keep, holdout)`` sets, stratified by class.

    Each class puts ``round(holdout_fraction * n_c)`` (at least ``min_per_class`` when the class
    has two or more samples) into the holdout.
    """
    if not 0 < holdout_fraction < 1:
        raise DataError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}.")
    labels = labels.to("cpu", torch.int64)
    if len(labels) == 0:
        raise DataError("cannot split an empty label set.")
    g = torch.Generator().manual_seed(seed)
    keep: list[Tensor] = []
    hold: list[Tensor] = []
    for c in torch.unique(labels).tolist():
        pool = torch.nonzero(labels == c).flatten()
        pool = pool[torch.randperm(len(pool), generator=g)]
        m = round(holdout_fraction * len(pool))
        m = min(max(m, min_per_class), len(pool) - 1) if len(pool) >= 2 else 0
        hold.append(pool[:m])
        keep.append(pool[m:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(hold)).values


def balanced_subsample(labels: Tensor, n: int, *, seed: int = 0) -> Tensor:
    """At most ``n`` random indices that cover the classes as evenly as they allow (sorted).

    Unlike ``x[:n]`` this does not depend on the order of the data: class-sorted data (an
    ImageFolder, a concatenation of per-class shots) still gives every class its share. Each
    class contributes ``n // k`` or one more, and a class with fewer samples gives all it has
    (the rest is filled from the larger classes).

    Example:
        >>> import torch
        >>> idx = balanced_subsample(torch.arange(100) // 10, 20, seed=0)
        >>> torch.bincount(torch.arange(100)[idx] // 10).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}.")
    labels = labels.to("cpu", torch.int64).flatten()
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    lab = labels[perm]
    # rank of each sample within its class, in random order: take rank 0 of every class
    # first, then rank 1, ... (a stable sort by label keeps the random order inside a class)
    by_label = torch.sort(lab, stable=True).indices
    sorted_lab = lab[by_label]
    starts = torch.searchsorted(sorted_lab, sorted_lab, right=False)
    rank = torch.empty_like(lab)
    rank[by_label] = torch.arange(len(lab)) - starts
    order = torch.sort(rank, stable=True).indices
    return torch.sort(perm[order[:n]]).values
