"""Data-parallel training over processes with ``torch.distributed`` (launched by torchrun).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`sctorch.models.fit`
trains data-parallel: every process (rank) builds the same model from the same seed,
the initial weights are broadcast from rank 0, each rank computes the loss of its
contiguous share of every global mini-batch, the gradients are averaged over ranks with
``torch.distributed.all_reduce`` and every rank takes the same optimiser step. This is the
algorithm of :class:`torch.nn.parallel.DistributedDataParallel`, done after the backward
pass because sctorch's loss functions call into their modules in method-specific ways
(e.g. scRobust's pre-training loss), which DDP's forward wrapper cannot intercept.

The process group is initialised on first use: NCCL when the model is on a CUDA device,
gloo otherwise. Single-process use (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) is unchanged.
"""

from __future__ import annotations

import os

import numpy as np


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when absent)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_active() -> bool:
    """Whether a torch.distributed process group of more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    """The rank of this process (0 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if is_active() else 0


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes files."""
    if is_active():
        return rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device=None) -> bool:
    """Initialise the process group from torchrun's environment, if there is one.

    Returns whether training is distributed. NCCL is used for a CUDA ``device``, gloo
    otherwise; an existing process group is reused.

    Raises
    ------
    RuntimeError
        If ``WORLD_SIZE`` > 1 but the rendezvous variables (``MASTER_ADDR`` …) are missing.
    """
    import torch.distributed as dist

    if env_world_size() <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                "WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with "
                "torchrun (e.g. torchrun --nproc_per_node 2 -m sctorch ...)."
            )
        use_nccl = device is not None and str(device).startswith("cuda")
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return is_active()


def shard(batch):
    """The contiguous share of a global mini-batch that this rank trains on.

    ``batch`` is an array or tensor with one row per cell, or a (nested) tuple / list of
    such, all with the same number of rows; the shares of all ranks are the
    ``numpy.array_split`` of the rows. Any other batch is returned whole (each rank then
    trains on all of it). Losses computed per share (e.g. a contrastive loss whose
    negatives are the other cells of the batch) see only this rank's share.
    """
    n = world_size()
    if n == 1:
        return batch
    lengths = set(_leaf_lengths(batch))
    if len(lengths) != 1:
        return batch
    bounds = np.linspace(0, lengths.pop(), n + 1).round().astype(int)
    r = rank()
    return _slice(batch, slice(int(bounds[r]), int(bounds[r + 1])))


def _leaf_lengths(batch):
    import torch

    if isinstance(batch, tuple | list):
        for b in batch:
            yield from _leaf_lengths(b)
    elif isinstance(batch, torch.Tensor | np.ndarray) and batch.ndim:
        yield len(batch)
    else:
        yield None


def _slice(batch, sl: slice):
    if isinstance(batch, tuple | list):
        return type(batch)(_slice(b, sl) for b in batch)
    return batch[sl]


def broadcast_parameters(module) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
    import torch.distributed as dist

    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(params) -> None:
    """Replace every gradient by its mean over ranks (missing gradients count as zero)."""
    import torch
    import torch.distributed as dist

    n = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(n)


def mean_over_ranks(value: float) -> float:
    """The mean of a float over ranks (for logged losses and validation scores)."""
    import torch
    import torch.distributed as dist

    if not is_active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()
