"""fit(): the one training loop of sctorch.

Every method trains its torch modules through :func:`fit` (epochs, mini-batches, optimiser
step, per-epoch scheduler, validation, early stopping, best-weights restore, history,
progress bar, logging). What a method supplies is its batches and its loss.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

logger = logging.getLogger("sctorch")


@dataclasses.dataclass
class LossOutput:
    """What a method's loss function returns to :func:`fit` (scvi-tools' ``LossOutput``).

    Attributes
    ----------
    loss
        The scalar tensor to minimise (back-propagated by :func:`fit`).
    metrics
        Extra per-batch values to record, ``{name: float or scalar tensor}``; their epoch
        means are stored as ``history[f"{prefix}_{name}"]``.
    """

    loss: Any
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, out) -> LossOutput:
        """A :class:`LossOutput` from one, a scalar tensor or ``(loss, metrics)``."""
        if isinstance(out, LossOutput):
            return out
        if isinstance(out, tuple):
            loss, metrics = out
            return cls(loss, dict(metrics))
        return cls(out)


def fit(
    module,
    loss_fn: Callable[[Any], LossOutput],
    batches: Callable[[int], Iterable[Any]],
    *,
    epochs: int,
    optimizer=None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    params: Iterable | None = None,
    scheduler: Callable[[Any], Any] | None = None,
    validate: Callable[[], float] | None = None,
    val_key: str = "val_loss",
    mode: Literal["min", "max"] = "min",
    patience: int | None = None,
    min_delta: float = 1e-5,
    restore_best: bool = True,
    history: dict[str, list[float]] | None = None,
    prefix: str = "train",
    desc: str = "training",
    progress: bool = True,
    bar=None,
) -> dict[str, list[float]]:
    """Train ``module`` for up to ``epochs`` passes; the one training loop of sctorch.

    Each epoch: ``module.train()``; for every batch of ``batches(epoch)``, compute
    ``loss_fn(batch)``, zero the gradients, back-propagate and step the optimiser; step
    the scheduler; then, with ``validate``, evaluate it with ``module.eval()`` under
    ``torch.no_grad()``. With ``validate``, the weights of the best epoch are restored at
    the end (``restore_best``) and training stops after ``patience`` epochs without an
    improvement larger than ``min_delta``.

    Randomness comes from the caller's batches and from torch's global generator (weight
    initialisation, dropout); callers run training inside :func:`sctorch._utils.seeded`.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) training is data-parallel
    (:mod:`sctorch.models._distributed`): rank 0's initial weights are broadcast, each rank
    computes the loss of its contiguous share of every global batch (a batch of cell
    indices, array or tensor), gradients are averaged over ranks before each step, and the
    recorded losses and validation scores are means over ranks, so every rank takes the
    same early-stopping decision.

    Parameters
    ----------
    module
        The :class:`torch.nn.Module` to train (its parameters are optimised unless
        ``params`` or ``optimizer`` says otherwise).
    loss_fn
        ``batch -> LossOutput``: the scalar loss to minimise and extra per-batch values to
        record (their epoch means are stored as ``history[f"{prefix}_{name}"]``); a bare
        scalar tensor is read as ``LossOutput(loss)``.
    batches
        ``epoch -> iterable of batches`` (any objects ``loss_fn`` understands).
    epochs
        Maximum number of epochs (≥ 1).
    optimizer
        A ready :class:`torch.optim.Optimizer` (e.g. one kept across calls); ``None``
        builds Adam over ``params`` (default: ``module.parameters()``) with ``lr``,
        ``betas`` and ``weight_decay``.
    scheduler
        ``optimizer -> LR scheduler``, stepped once per epoch.
    validate
        ``() -> float``: the model-selection score of the current weights, recorded as
        ``history[val_key]``.
    mode
        ``"min"``: lower validation scores are better; ``"max"``: higher.
    patience
        Epochs without improvement before stopping (``None``: never stop early).
    restore_best
        Keep the weights of the best validation epoch (only with ``validate``).
    history
        A history dict to append to (modified in place and returned).
    prefix
        Prefix of the training keys: ``history[f"{prefix}_loss"]`` is the mean batch loss.
    desc, progress, bar
        Progress-bar label and switch; ``bar`` is an existing ``tqdm`` bar to advance by
        one per epoch instead of a new one.

    Returns
    -------
    The history, ``{key: [value per epoch]}``.

    Raises
    ------
    ValueError
        If ``epochs`` < 1, ``mode`` is unknown, or a loss is not finite (says which epoch).
    """
    import torch

    from .._utils import RunLength, progress_bar

    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}.")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
    if optimizer is None:
        optimizer = torch.optim.Adam(
            module.parameters() if params is None else params,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
        )
    sched = scheduler(optimizer) if scheduler is not None else None
    step = _Stepper(module, loss_fn, optimizer)
    history = {} if history is None else history
    best = _Best(module, mode, min_delta, patience, restore_best)
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(total=int(epochs), desc=desc, progress=progress)
    length = RunLength(desc, epochs, stops_early=validate is not None and patience is not None)
    try:
        for epoch in range(int(epochs)):
            means = step.epoch(batches(epoch))
            length.tick(epoch)  # warns once if the run is estimated to take absurdly long
            if "loss" in means and not np.isfinite(means["loss"]):
                raise ValueError(
                    f"{desc}: the training loss became non-finite in epoch "
                    f"{epoch + 1}; lower the learning rate or check the input."
                )
            for k, v in means.items():
                history.setdefault(f"{prefix}_{k}", []).append(v)
            if sched is not None:
                sched.step()
            post = {"loss": f"{means.get('loss', np.nan):.4f}"}
            stop = False
            if validate is not None:
                module.eval()
                with torch.no_grad():
                    score = step.dist.mean_over_ranks(float(validate()))
                history.setdefault(val_key, []).append(score)
                post[val_key] = f"{score:.4f}"
                stop = best.update(score)
            logger.info(
                "%s epoch %d: %s", desc, epoch + 1, ", ".join(f"{k} {v}" for k, v in post.items())
            )
            bar.set_postfix(post) if own_bar else None
            bar.update(1)
            if stop:
                logger.info("%s: early stop after %d epochs", desc, epoch + 1)
                break
    finally:
        if own_bar:
            bar.close()
    best.restore()
    module.eval()
    return history


class _Stepper:
    """One epoch of optimiser steps (sharded and gradient-averaged under torchrun)."""

    def __init__(self, module, loss_fn, optimizer):
        from . import _distributed

        self.module, self.loss_fn, self.optimizer = module, loss_fn, optimizer
        self.dist = _distributed
        first = next(iter(module.parameters()), None)
        self.distributed = _distributed.setup(None if first is None else first.device)
        if self.distributed:
            _distributed.broadcast_parameters(module)
        self.trained = [p for g in optimizer.param_groups for p in g["params"]]

    def epoch(self, batches) -> dict[str, float]:
        """Train on every batch; the mean loss (and extras) per batch, over all ranks."""
        self.module.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in batches:
            self.optimizer.zero_grad(set_to_none=True)
            if self.distributed:
                batch = self.dist.shard(batch)
                if _empty(batch):  # an empty share still joins the gradient average
                    self.dist.average_gradients(self.trained)
                    self.optimizer.step()
                    continue
            out = LossOutput.of(self.loss_fn(batch))
            loss, extra = out.loss, out.metrics
            loss.backward()
            if self.distributed:
                self.dist.average_gradients(self.trained)
            self.optimizer.step()
            for k, v in (("loss", loss.detach()), *extra.items()):
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        if self.distributed:
            n = self.dist.mean_over_ranks(n)
            sums = {k: self.dist.mean_over_ranks(v) for k, v in sums.items()}
        return {k: v / max(n, 1) for k, v in sums.items()}


class _Best:
    """Tracks the best validation score: patience counter and the best weights."""

    def __init__(self, module, mode, min_delta, patience, restore_best):
        self.module, self.min_delta, self.patience = module, min_delta, patience
        self.sign = 1.0 if mode == "min" else -1.0
        self.restore_best = restore_best
        self.best, self.state, self.stale = np.inf, None, 0

    def update(self, score: float) -> bool:
        """Record a validation score; returns whether to stop (patience exhausted)."""
        if self.sign * score < self.best - self.min_delta:
            self.best, self.stale = self.sign * score, 0
            if self.restore_best:
                self.state = copy.deepcopy(self.module.state_dict())
            return False
        self.stale += 1
        return self.patience is not None and self.stale >= self.patience

    def restore(self) -> None:
        """Load the best weights, if any were kept."""
        if self.state is not None:
            self.module.load_state_dict(self.state)


def _empty(batch) -> bool:
    while isinstance(batch, tuple | list) and batch:
        batch = batch[0]
    return hasattr(batch, "__len__") and len(batch) == 0
