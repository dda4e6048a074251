"""Data-parallel purification and training under ``torchrun`` (``torch.distributed``).

hardenkit does not wrap the model in ``DistributedDataParallel``: the strategies train more
than a module's parameters (ANP learns channel masks with the weights frozen, MCL runs a
feature extractor with hooks on the inner modules, pruning keeps gradient hooks on pruned
weights), and DDP's mean over ranks is only the global-batch mean when every rank holds the
same number of images. Instead every training loop calls :func:`train_step`, which uses the
``torch.distributed`` collectives directly:

* **sharding** — every rank holds the whole clean set and draws the same seeded permutation;
  rank ``r`` takes the contiguous slice ``[⌊rB/W⌋, ⌊(r+1)B/W⌋)`` of each global mini-batch
  of ``B`` images (``W`` ranks). Random augmentation parameters are drawn for the whole
  global batch and sliced the same way, so every image gets the crop/flip it gets in one
  process;
* **gradients** — the local mean loss is scaled by ``n_r / B`` before ``backward`` and the
  gradients are summed over the ranks (one flat all-reduce per step and dtype), so every
  rank ends with the gradient of the global-batch mean loss, whatever the slice sizes.
  A parameter whose gradient is ``None`` on every rank stays ``None`` (the optimizer then
  skips it, as it does in one process);
* **weights** — identical on every rank: broadcast from rank 0 at the start, then updated
  with identical gradients. BatchNorm running statistics, which each rank computes on its own
  shard, are averaged at each epoch end (:meth:`Distributed.sync_buffers`), before any
  evaluation.

With one process (no ``torchrun``) :func:`train_step` is exactly the plain
``loss.backward()``: results are bit-identical to hardenkit without this module.

Example:
    >>> import torch
    >>> d = Distributed(rank=1, world_size=3, local_rank=1, backend="gloo")
    >>> d.bounds(8), d.bounds(2)
    ((2, 5), (0, 1))
    >>> local, weight = d.local(torch.arange(10, 18))
    >>> local.tolist(), weight
    ([12, 13, 14], 0.375)
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..logging import get_logger
from ..reports import DistributedInfo, ModelFingerprint

__all__ = [
    "Distributed",
    "batchnorm_note",
    "distributed_info",
    "is_main_process",
    "same_input_on_every_rank",
    "same_output_on_every_rank",
    "setup",
    "shutdown",
    "train_step",
    "world_size",
]

_log = get_logger("distributed")

_BN = nn.modules.batchnorm._BatchNorm
T = TypeVar("T")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def world_size() -> int:
    """Processes in the default process group (1 when none is initialised)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def is_main_process() -> bool:
    """True unless this process is a rank other than 0 of an initialised process group.

    Files (models, reports) are written by the main process only.
    """
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return True


@dataclass
class Distributed:
    """This process's place in a data-parallel run (see the module docstring)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this rank computes (and where the collectives' tensors live)."""
    sync_batchnorm: bool = False
    initialised_here: bool = False
    """True when hardenkit initialised the process group (from the torchrun environment)."""
    _swapped: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- sharding ------------------------------------------------------------------------

    def bounds(self, n: int) -> tuple[int, int]:
        """``[lo, hi)`` of this rank's contiguous slice of a global batch of ``n`` items."""
        return (n * self.rank) // self.world_size, (n * (self.rank + 1)) // self.world_size

    def local(self, idx: Tensor) -> tuple[Tensor, float]:
        """This rank's part of the global mini-batch ``idx`` and its weight ``n_r / n``."""
        lo, hi = self.bounds(len(idx))
        return idx[lo:hi], (hi - lo) / max(1, len(idx))

    # -- collectives ---------------------------------------------------------------------

    def all_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over the ranks, in place (one flat all-reduce per dtype/device)."""
        groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        dist = _dist()
        for ts in groups.values():
            flat = torch.cat([t.reshape(-1) for t in ts])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for t in ts:
                k = t.numel()
                t.copy_(flat[offset : offset + k].view_as(t))
                offset += k

    def sum_gradients(
        self, grads: Sequence[Tensor | None], like: Sequence[Tensor]
    ) -> list[Tensor | None]:
        """Sum per-rank gradients (``None`` = no gradient on this rank) over the ranks.

        A gradient ``None`` on every rank stays ``None``; otherwise the missing ones count as
        zeros. ``like`` gives the shape/dtype/device of each entry.
        """
        filled = [
            g.detach().clone() if g is not None else torch.zeros_like(ref)
            for g, ref in zip(grads, like, strict=True)
        ]
        present = torch.tensor(
            [0.0 if g is None else 1.0 for g in grads],
            device=like[0].device if like else torch.device("cpu"),
        )
        self.all_sum([*filled, present])
        return [g if float(p) > 0 else None for g, p in zip(filled, present.tolist(), strict=True)]

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank."""
        dist = _dist()
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def sync_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks;
        integer buffers (``num_batches_tracked``) take rank 0's value."""
        floats = [b for b in module.buffers() if b.is_floating_point()]
        ints = [b for b in module.buffers() if not b.is_floating_point()]
        if not floats and not ints:
            return
        dist = _dist()
        with torch.no_grad():
            if floats:
                self.all_sum(floats)
                for b in floats:
                    b.div_(self.world_size)
            for b in ints:
                dist.broadcast(b, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_sum([t])
        return bool(t.item() > 0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        dist = _dist()
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable object; keep its tensors on the CPU) on every rank."""
        dist = _dist()
        box: list[Any] = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        out: T = box[0]
        return out

    def max_values(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key maximum over the ranks (keys present on any rank)."""
        gathered = self.all_gather_object(values)
        keys = sorted({k for d in gathered for k in d})
        return {k: max(float(d[k]) for d in gathered if k in d) for k in keys}

    # -- BatchNorm ------------------------------------------------------------------------

    def convert_batchnorm(self, model: nn.Module) -> int:
        """Swap every BatchNorm layer of ``model`` for a ``SyncBatchNorm`` sharing its
        parameters and buffers (undo with :meth:`restore_batchnorm`); returns the count."""
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _BN) and not isinstance(child, nn.SyncBatchNorm):
                    sync = nn.SyncBatchNorm.convert_sync_batchnorm(child)  # type: ignore[no-untyped-call]
                    setattr(parent, name, sync)
                    self._swapped.append((parent, name, child))
        return len(self._swapped)

    def restore_batchnorm(self) -> None:
        """Put the original BatchNorm modules back (they share the trained tensors)."""
        for parent, name, original in reversed(self._swapped):
            setattr(parent, name, original)
        self._swapped.clear()


def setup(runtime: Any) -> Distributed | None:
    """The data-parallel context of this process, or ``None`` for a single process.

    Uses the default process group when the caller initialised one; otherwise, under
    ``torchrun`` (``WORLD_SIZE`` > 1 and ``RANK`` in the environment), initialises it from
    the environment — NCCL when the run's device is CUDA, gloo on the CPU — and destroys it
    at interpreter exit. ``RuntimeConfig(distributed="off")`` ignores both (every rank then
    runs the whole job on its own). On CUDA, ``device="auto"``/``"cuda"`` selects
    ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: ``sync_batchnorm=True`` on a device other than CUDA, or an NCCL process
            group with a CPU device.
    """
    global _INITIALISED_HERE
    mode = getattr(runtime, "distributed", "auto")
    sync_bn = bool(getattr(runtime, "sync_batchnorm", False))
    device_spec = str(getattr(runtime, "device", "auto"))
    if mode == "off":
        _check_sync_bn(runtime, sync_bn)
        return None
    dist = _dist()
    if not dist.is_available():
        _check_sync_bn(runtime, sync_bn)
        return None
    initialised_here = False
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_initialized():
        if int(dist.get_world_size()) <= 1:
            _check_sync_bn(runtime, sync_bn)
            return None
        _select_cuda(device_spec, local_rank)
    else:
        ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if ws <= 1 or "RANK" not in os.environ:
            _check_sync_bn(runtime, sync_bn)
            return None
        _select_cuda(device_spec, local_rank)
        device = runtime.resolve_device()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        _INITIALISED_HERE = True
        atexit.register(_destroy)
        initialised_here = True
        _log.info(
            "distributed.init",
            backend=backend,
            rank=int(dist.get_rank()),
            world_size=int(dist.get_world_size()),
        )
    device = runtime.resolve_device()
    backend_name = str(dist.get_backend())
    if "nccl" in backend_name and "gloo" not in backend_name and device.type != "cuda":
        raise ConfigError(
            f"the process group uses NCCL but the run's device is {device.type!r}.",
            hint="NCCL needs CUDA tensors: use device='auto'/'cuda', or a gloo process group",
        )
    _check_sync_bn(runtime, sync_bn)
    return Distributed(
        rank=int(dist.get_rank()),
        world_size=int(dist.get_world_size()),
        local_rank=local_rank,
        backend=backend_name,
        device=device,
        sync_batchnorm=sync_bn,
        initialised_here=initialised_here,
    )


def _check_sync_bn(runtime: Any, sync_bn: bool) -> None:
    if sync_bn and runtime.resolve_device().type != "cuda":
        raise ConfigError(
            "sync_batchnorm=True needs CUDA: torch's SyncBatchNorm runs on GPUs only.",
            hint="set sync_batchnorm=False on the CPU (BatchNorm then normalises each rank's "
            "shard on its own; see docs/scale.md), or run on GPUs",
        )


def _select_cuda(device_spec: str, local_rank: int) -> None:
    if device_spec in ("auto", "cuda") and torch.cuda.is_available():  # pragma: no cover - GPU
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))


_INITIALISED_HERE = False
"""True once :func:`setup` initialised the default process group (so hardenkit tears it down)."""


def shutdown(timeout_s: float = 60.0) -> None:
    """Tear down the process group :func:`setup` initialised, all ranks together.

    Every rank first waits at a barrier (gloo: ``monitored_barrier`` bounded by ``timeout_s``),
    so no rank closes its connections while another still runs a collective or writes the
    report; a rank that exits early otherwise makes a peer's transport fail as the peer's
    process exits (seen once in CI as a ``SIGABRT`` of a worker, i.e. exit code 1 on a clean
    model). A process group the caller initialised is left alone. Never raises: a peer that
    already died only makes the barrier time out, and the group is destroyed anyway.
    """
    global _INITIALISED_HERE
    dist = _dist()
    if not (_INITIALISED_HERE and dist.is_available() and dist.is_initialized()):
        return
    _INITIALISED_HERE = False
    try:
        if "gloo" in str(dist.get_backend()):
            import datetime

            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:  # pragma: no cover - NCCL needs GPUs
            dist.barrier()
    except Exception as exc:  # a dead or stuck peer: tear down anyway, say so
        _log.warning("distributed.shutdown_barrier_failed", error=str(exc))
    try:
        dist.destroy_process_group()
    except Exception as exc:  # pragma: no cover - defensive
        _log.warning("distributed.destroy_failed", error=str(exc))


def _destroy() -> None:  # pragma: no cover - runs at interpreter exit
    shutdown()


# -- the Purifier's and RobustTrainer's bookkeeping ------------------------------------------


def distributed_info(dist: Distributed | None) -> DistributedInfo:
    """The report record of a (possibly) data-parallel run."""
    if dist is None:
        return DistributedInfo()
    return DistributedInfo(
        world_size=dist.world_size, backend=dist.backend, sync_batchnorm=dist.sync_batchnorm
    )


def same_input_on_every_rank(
    dist: Distributed, model: nn.Module, fp: ModelFingerprint, notes: list[str]
) -> None:
    """Make ``model`` (a copy of the caller's) rank 0's on every rank; ``fp`` is the caller's
    model's fingerprint on this rank. Notes when the ranks were given different weights."""
    shas = dist.all_gather_object(fp.sha256)
    dist.broadcast_module(model)
    differ = [r for r, sha in enumerate(shas) if sha != shas[0]]
    if differ:
        notes.append(
            f"the model passed on rank(s) {differ} had other weights than rank 0's; every rank "
            "purified rank 0's model (the report's input_model)"
        )


def same_output_on_every_rank(
    dist: Distributed, model: nn.Module, fp: ModelFingerprint, notes: list[str]
) -> ModelFingerprint:
    """Check that every rank ended with the same weights; if not, take rank 0's and say so."""
    shas = dist.all_gather_object(fp.sha256)
    differ = [r for r, sha in enumerate(shas) if sha != shas[0]]
    if not differ:
        return fp
    dist.broadcast_module(model)
    notes.append(
        f"rank(s) {differ} ended with other weights than rank 0 (a non-deterministic step, or "
        "a strategy that does not keep the ranks in step); every rank now returns rank 0's "
        "model, which is the one reported"
    )
    _log.warning("distributed.ranks_diverged", ranks=differ)
    return ModelFingerprint.of(model)


def batchnorm_note(dist: Distributed, model: nn.Module, notes: list[str]) -> None:
    if dist.sync_batchnorm:
        return
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append(
            f"data-parallel run on {dist.world_size} ranks: BatchNorm layers in train mode "
            "normalise each rank's shard of the mini-batch on their own (running statistics "
            "are averaged over the ranks each epoch), so the result deviates slightly from one "
            "process with the same global batch; sync_batchnorm=True (CUDA) uses the global "
            "batch statistics"
        )


LossOnShard = Callable[[Tensor, slice], Tensor]
"""``loss(local_indices, part)``: the mean loss over this rank's images ``local_indices``;
``part`` is their slice of the global batch (to slice per-batch random parameters)."""


def train_step(
    dist: Distributed | None,
    idx: Tensor,
    loss_fn: LossOnShard,
    params: Sequence[Tensor],
) -> Tensor:
    """One training step's backward on this rank's shard of the global batch ``idx``.

    Call ``optimizer.zero_grad()`` before and ``optimizer.step()`` after. Afterwards every
    ``p.grad`` of ``params`` holds the gradient of the *global-batch* mean loss on every
    rank. Returns that global loss (detached). With ``dist=None`` this is exactly
    ``loss = loss_fn(idx, slice(0, len(idx))); loss.backward()``.
    """
    if dist is None:
        loss = loss_fn(idx, slice(0, len(idx)))
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()
    lo, hi = dist.bounds(len(idx))
    weight = (hi - lo) / max(1, len(idx))
    device = params[0].device if params else idx.device
    scaled = torch.zeros((), device=device)
    if hi > lo:
        loss = loss_fn(idx[lo:hi], slice(lo, hi))
        part = loss * weight
        part.backward()  # type: ignore[no-untyped-call]
        scaled = part.detach().float().reshape(())
    elif dist.sync_batchnorm:  # pragma: no cover - GPU only
        # SyncBatchNorm's collectives need every rank's forward and backward
        loss = loss_fn(idx[lo:hi], slice(lo, hi))
        (torch.nan_to_num(loss, nan=0.0) * 0.0).backward()  # type: ignore[no-untyped-call]
    summed = dist.sum_gradients([*(p.grad for p in params), scaled], [*params, scaled])
    for p, g in zip(params, summed[:-1], strict=True):
        p.grad = g
    total = summed[-1]
    return total if total is not None else scaled
