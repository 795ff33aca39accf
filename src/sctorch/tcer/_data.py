"""TCER training data: the cell split and the masked GenoMap batches (TCER eqs. 12–13).

No AnnData here: the batches are built from a function ``images_of(cell_positions)``
that returns scaled GenoMap images ``(n, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .._utils import get_rng, iter_batches
from ._module import mask_blind_spot, mask_nonzero


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
    scaled images ``(B, H, W)``, the masked input (placeholder δ on hidden pixels) and the
    bool pixels the loss is taken on (``objective="blind_spot"``: the hidden pixels;
    ``"dropout"``: the observed non-zero gene pixels). Training cells are shuffled each
    epoch. The validation cells get masks drawn once, before training, so their loss
    (:meth:`val_loss`) is comparable across epochs.

    Parameters
    ----------
    images_of
        ``cell positions -> float32 images (n, H, W)`` (scaled log-normalised values).
    train_idx, val_idx
        Cell positions for training and validation.
    gene_px
        Bool ``(H, W)``: pixels that hold a gene.
    mask_ratio
        ``(low, high)`` range of the per-image fraction of pixels hidden.
    objective
        ``"blind_spot"`` (:func:`mask_blind_spot`) or ``"dropout"`` (:func:`mask_nonzero`).
    batch_size
        Images per training batch.
    seed
        Seeds the mask generator (torch, CPU) and the shuffling (numpy).
    device
        Torch device of the yielded tensors.
    """

    def __init__(self, images_of: Callable[[np.ndarray], np.ndarray], train_idx: np.ndarray,
                 val_idx: np.ndarray, *, gene_px: np.ndarray, mask_ratio: tuple[float, float],
                 objective: str, batch_size: int, seed: int, device):
        self.images_of = images_of
        self.train_idx = train_idx
        self.gene_px = torch.as_tensor(gene_px)
        self.mask_ratio = mask_ratio
        self.blind = objective == "blind_spot"
        self.masker = mask_blind_spot if self.blind else mask_nonzero
        self.batch_size = batch_size
        self.device = device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.val = []  # fixed validation masks, drawn first
        for sl in iter_batches(len(val_idx), 256):
            x = torch.as_tensor(images_of(val_idx[sl]))
            inp, masked = self.masker(x, *mask_ratio, self.gene_px, self.gen)
            self.val.append((inp, x, masked))

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.rng.permutation(self.train_idx)
        for sl in iter_batches(len(order), self.batch_size):
            x = torch.as_tensor(self.images_of(order[sl]))
            inp, hidden = self.masker(x, *self.mask_ratio, self.gene_px, self.gen)
            x, inp, hidden = x.to(self.device), inp.to(self.device), hidden.to(self.device)
            known = hidden if self.blind else (x > 0) & self.gene_px.to(self.device)
            yield x, inp, known

    def val_loss(self, module) -> float:
        """Held-out masked loss: mean error of ``module`` on the hidden validation pixels.

        Squared error for blind-spot, absolute for dropout, pooled over all hidden pixels
        of all validation images.
        """
        num = den = 0.0
        for inp, x, masked in self.val:
            pred = module(inp.to(self.device)[:, None]).squeeze(1).cpu()
            err = (pred - x) ** 2 if self.blind else torch.abs(pred - x)
            num += float((err * masked).sum())
            den += float(masked.sum())
        return num / max(den, 1.0)
