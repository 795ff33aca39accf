"""TCER training data: the cell split and the masked GenoMap batches (TCER eqs. 12–13).

No AnnData here: the batches are built from a function ``images_of(cell_positions)``
that returns scaled GenoMap images ``(n, C, H, W)``: channel 0 is the cell's own GenoMap
(the one that is masked and predicted), any further channel is context shown unmasked
(the GenoMap of the mean of the cell's nearest neighbours).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .._utils import get_rng, iter_batches
from ._config import OBJECTIVES
from ._module import mask_blind_spot, mask_nonzero, pixel_error


def split_cells(n: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` cell positions: a seeded random ``validation_fraction``.

    No cell is held out when ``n < 20``.
    """
    n_val = round(validation_fraction * n) if n >= 20 else 0
    perm = get_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class MaskedBatches:
    """Mini-batches of masked GenoMaps for :func:`sctorch.models.fit`, and the validation loss.

    Calling ``batches(epoch)`` yields ``(x, inputs, known)`` tensors on ``device``:
    the cells' own scaled images ``(B, H, W)``, the network input ``(B, C, H, W)`` (channel
    0 masked with the placeholder δ on hidden pixels, other channels as given) and the
    bool pixels the loss is taken on (``objective="blind_spot"``: the hidden pixels;
    ``"dropout"``: the observed non-zero gene pixels; ``"noise2noise"``: ``x`` is the target
    part's image, the input is not masked and every gene pixel is scored). Training cells
    are shuffled each epoch. The validation cells get masks (or splits) drawn once, before
    training, so their loss (:meth:`val_loss`) is comparable across epochs.

    Parameters
    ----------
    images_of
        ``cell positions -> float32 images (n, C, H, W)`` (scaled log-normalised values).
    train_idx, val_idx
        Cell positions for training and validation.
    gene_px
        Bool ``(H, W)``: pixels that hold a gene.
    mask_ratio
        ``(low, high)`` range of the per-image fraction of pixels hidden.
    objective
        ``"poisson"`` or ``"blind_spot"`` (:func:`mask_blind_spot`), or ``"dropout"``
        (:func:`mask_nonzero`); also names the validation error (:func:`pixel_error`).
    batch_size
        Images per training batch.
    seed
        Seeds the mask generator (torch, CPU) and the shuffling (numpy).
    device
        Torch device of the yielded tensors.
    scale
        The images' scale (``log1p`` rate = image × ``scale``), for the Poisson error.
    max_cells
        Training cells per epoch (the first of each epoch's shuffle; ``None``: all), and
        four times the most validation cells kept (a seeded subset).
    split_of
        For ``objective="noise2noise"``: ``(cell positions, numpy Generator) -> (inputs (n,
        C, H, W), target (n, H, W))``, the network input from one binomial part of the
        cells' counts and the other part's scaled image; nothing is masked and the loss
        is taken on every gene pixel. ``images_of`` is then not used.
    """

    def __init__(
        self,
        images_of: Callable[[np.ndarray], np.ndarray],
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        *,
        gene_px: np.ndarray,
        mask_ratio: tuple[float, float],
        objective: str,
        batch_size: int,
        seed: int,
        device,
        scale: float = 1.0,
        max_cells: int | None = None,
        split_of: Callable | None = None,
    ):
        self.images_of, self.split_of = images_of, split_of
        if OBJECTIVES[objective]["split"] != (split_of is not None):
            raise ValueError(f"objective {objective!r} and split_of do not agree.")
        self.train_idx = train_idx
        self.gene_px = torch.as_tensor(gene_px)
        self.mask_ratio = mask_ratio
        self.objective, self.scale = objective, float(scale)
        self.blind = OBJECTIVES[objective]["blind_spot"]
        self.masker = mask_blind_spot if self.blind else mask_nonzero
        self.batch_size = batch_size
        self.device = device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.max_cells = max_cells
        if max_cells is not None and len(val_idx) > max(max_cells // 4, 1):
            val_idx = np.sort(self.rng.choice(val_idx, max(max_cells // 4, 1), replace=False))
        self.val = []  # fixed validation masks, drawn first; batches of the training size,
        for sl in iter_batches(len(val_idx), batch_size):  # which sets the peak memory
            x, inp, masked = self._masked(val_idx[sl])
            self.val.append((inp, x, masked))

    def _masked(self, cells):
        if self.split_of is not None:
            inp, target = (torch.tensor(v) for v in self.split_of(cells, self.rng))
            return target, inp, self.gene_px.expand_as(target).clone()
        imgs = torch.tensor(self.images_of(cells))  # a copy in torch-aligned memory
        x = imgs[:, 0]
        inp, hidden = self.masker(x, *self.mask_ratio, self.gene_px, self.gen)
        return x, torch.cat([inp[:, None], imgs[:, 1:]], dim=1), hidden

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.rng.permutation(self.train_idx)
        if self.max_cells is not None:
            order = order[: self.max_cells]
        for sl in iter_batches(len(order), self.batch_size):
            x, inp, known = self._masked(order[sl])
            x, inp, known = x.to(self.device), inp.to(self.device), known.to(self.device)
            if not (self.blind or self.split_of is not None):  # "dropout"
                known = (x > 0) & self.gene_px.to(self.device)
            yield x, inp, known

    def val_loss(self, module) -> float:
        """Held-out masked loss: mean error of ``module`` on the hidden validation pixels.

        :func:`~sctorch.tcer._module.pixel_error` of the objective, pooled over all
        hidden pixels of all validation images.
        """
        num = den = 0.0
        for inp, x, masked in self.val:
            pred = module(inp.to(self.device)).squeeze(1).cpu()
            err = pixel_error(self.objective, pred, x, inp, self.scale)
            num += float((err * masked).sum())
            den += float(masked.sum())
        return num / max(den, 1.0)
