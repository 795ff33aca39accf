"""TCERModel: ER-Net trained on GenoMap images of one data set, with its placement and scale."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_cell_totals,
    check_not_empty,
    check_positive,
    check_unique_var_names,
    describe_source,
    get_matrix,
    is_backed,
    iter_batches,
    iter_row_blocks,
    log_normalize,
    progress_bar,
    read_rows,
    resolve_device,
    resolve_input_scale,
    seed_int,
    seeded,
)
from ..genomap import Placement
from ..models import BaseModel

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger("sctorch")

PRESETS: dict[str, dict[str, Any]] = {
    # laptop CPU: narrow network, early stopping on a held-out masked loss
    "fast": {"n_features": 16, "epochs": 30, "lr": 1e-3, "lr_step": 10, "patience": 5,
             "objective": "blind_spot", "observed_weight": 1.0},
    # the paper's settings: F = 64, 100 epochs, lr halved every 40 epochs, its masking
    # scheme, measured non-zeros kept
    "paper": {"n_features": 64, "epochs": 100, "lr": 1e-3, "lr_step": 40, "patience": None,
              "objective": "dropout", "observed_weight": 1.0},
}


@dataclass
class TCERParams:
    """Hyper-parameters of a TCER model (recorded in ``uns['tcer']['params']`` and on save).

    See :func:`sctorch.tl.tcer_impute` for their meaning; the defaults are the ``"fast"``
    preset (:data:`PRESETS`). ``n_dfa`` is the number of DFA modules of ER-Net.
    """

    n_features: int = 16
    n_dfa: int = 3
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lr_step: int = 10
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    fft_weight: float = 0.1
    patience: int | None = 5
    validation_fraction: float = 0.1
    target_sum: float = 1e4
    observed_weight: float = 1.0
    objective: str = "blind_spot"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range setting."""
        lo, hi = (float(v) for v in self.mask_ratio)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 < low <= high < 1, "
                             f"got {self.mask_ratio!r}.")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must lie in [0, 0.5), "
                             f"got {self.validation_fraction}.")
        if self.objective not in ("dropout", "blind_spot"):
            raise ValueError(f"objective must be 'dropout' or 'blind_spot', "
                             f"got {self.objective!r}.")
        if not 0.0 <= self.observed_weight <= 1.0:
            raise ValueError(f"observed_weight must lie in [0, 1], got {self.observed_weight!r}.")
        if min(self.epochs, self.batch_size, self.n_features, self.n_dfa, self.lr_step) < 1:
            raise ValueError(f"epochs, batch_size, n_features, n_dfa and lr_step must be >= 1; "
                             f"got {self.epochs}, {self.batch_size}, {self.n_features}, "
                             f"{self.n_dfa}, {self.lr_step}.")
        check_positive(lr=self.lr)


def check_counts_input(adata: ad.AnnData, layer: str | None):
    """The raw-count matrix of ``adata`` (``layer``), validated; TCER's input rule.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        No cells or genes, duplicate ``var_names``, values that are not raw counts, or a
        cell with zero counts.
    """
    check_not_empty(adata)
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    what = describe_source(layer)
    resolve_input_scale(X, "counts", what=what)
    check_cell_totals(X, what=what)
    return X


class TCERModel(BaseModel):
    """A TCER model: ER-Net weights, the GenoMap placement, the gene list and the scale.

    Wei et al. 2024, Brief Bioinform 25(2):bbae031. Make one from a GenoMap with
    :meth:`from_genomap`, train it with :meth:`fit`, impute cells (seen in training or
    new) with :meth:`impute`; :meth:`save` / :meth:`load` store it in sctorch's one model
    format (:class:`sctorch.models.BaseModel`). :func:`sctorch.tl.tcer_impute` does all
    of this in one call (``return_model=True`` gives the model).

    Parameters
    ----------
    module
        The :class:`~sctorch.tcer._module.ERNet` (``None`` before :meth:`fit`).
    config
        :class:`TCERParams`.
    genes
        The model's genes, in placement order.
    history
        ``{"train_loss": [...], "val_loss": [...]}`` per epoch.
    placement
        :class:`sctorch.genomap.Placement` of ``genes`` (every gene on its own pixel).
    scale
        Divisor that maps log-normalised values to the network's input range (the
        largest log-normalised value of the training data).
    """

    config_cls = TCERParams

    def __init__(self, module=None, *, config: TCERParams | None = None, genes=(),
                 history: dict[str, list[float]] | None = None,
                 placement: Placement | None = None, scale: float = 1.0):
        super().__init__(module, config=config, genes=genes, history=history)
        self.placement = placement
        self.scale = float(scale)

    @property
    def params(self) -> TCERParams:
        """The hyper-parameters (:attr:`config`)."""
        return self.config

    @classmethod
    def from_genomap(cls, adata: ad.AnnData, config: TCERParams | None = None, *,
                     genomap_key: str = _keys.GENOMAP) -> TCERModel:
        """An untrained model on the GenoMap ``genomap_key`` of ``adata`` (all genes placed).

        Raises
        ------
        KeyError
            If there is no placement under ``genomap_key``.
        ValueError
            If the placement is inconsistent or leaves a gene of ``adata`` unplaced.
        """
        placement = Placement.from_adata(adata, genomap_key)
        if (placement.rows < 0).any():
            raise ValueError(f"GenoMap {genomap_key!r} leaves {int((placement.rows < 0).sum())} "
                             "gene(s) of adata unplaced; TCER needs every gene on the map. Subset "
                             "adata to the placed genes or rebuild the GenoMap on all genes.")
        return cls(config=config, genes=list(map(str, adata.var_names)), placement=placement)

    # ------------------------------------------------------------------ BaseModel hooks
    @classmethod
    def _build_module(cls, config: TCERParams, extra: dict[str, Any]):
        """ER-Net of ``config`` (``n_features``, ``n_dfa``): the one constructor."""
        from ._module import ERNet

        return ERNet(config.n_features, config.n_dfa)

    def _extra_state(self):
        p = self.placement
        return ({"shape": [int(s) for s in p.shape], "scale": self.scale},
                {"placement_rows": np.asarray(p.rows, dtype=np.int64),
                 "placement_cols": np.asarray(p.cols, dtype=np.int64)})

    def _set_extra_state(self, extra, arrays) -> None:
        self.placement = Placement(arrays["placement_rows"].astype(np.int64),
                                   arrays["placement_cols"].astype(np.int64),
                                   tuple(int(s) for s in extra["shape"]))
        self.scale = float(extra["scale"])

    def _check_integrity(self) -> None:
        """The placement is one-to-one on its grid, places every gene, and fits the gene list."""
        p = self.placement
        if p is None:
            raise ValueError("the model has no GenoMap placement.")
        n_r, n_c = len(np.ravel(p.rows)), len(np.ravel(p.cols))
        if not n_r == n_c == len(self.genes):
            raise ValueError(f"the gene list has {len(self.genes)} genes but the placement has "
                             f"{n_r} rows and {n_c} columns; they must have one length.")
        p.check(what="The model's GenoMap placement")
        if (p.rows < 0).any():
            raise ValueError(f"the model's GenoMap placement leaves {int((p.rows < 0).sum())} "
                             "gene(s) unplaced; TCER needs every gene on the map.")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"the input scale must be a positive number, got {self.scale!r}.")

    # ------------------------------------------------------------------ training
    def _log_counts(self, adata: ad.AnnData, layer: str | None, what: str):
        """Log-normalised counts of the model's genes (validated) and their largest value.

        In memory: a CSR float32 matrix. For a backed AnnData: a function ``rows ->``
        CSR block that reads those cells from disk (the largest value is found in one pass
        over blocks), so training samples its mini-batches from the file.
        """
        X = check_counts_input(adata, layer)
        pos = self.gene_indexer(adata.var_names, min_shared=len(self.genes), what=what)
        cols = None if np.array_equal(pos, np.arange(adata.n_vars)) else pos
        target = self.config.target_sum

        def log_rows(block):
            Xlog = sparse.csr_matrix(log_normalize(block, target_sum=target), dtype=np.float32)
            return Xlog if cols is None else Xlog[:, cols]

        if not is_backed(X):
            Xlog = log_rows(X)
            return Xlog, (float(Xlog.data.max()) if Xlog.nnz else 0.0)
        top = max((float(b.data.max()) if b.nnz else 0.0
                   for b in (log_rows(blk) for _, blk in iter_row_blocks(X))), default=0.0)
        return (lambda idx: log_rows(read_rows(X, idx))), top

    def fit(self, adata: ad.AnnData, *, layer: str | None = None, rng: RandomState = 0,
            device: str | None = None, progress: bool = True) -> TCERModel:
        """Train ER-Net on the observed data only (TCER eqs. 12–16).

        The cells' log-normalised expression (``log1p(counts / library × target_sum)``),
        divided by its largest value (stored as :attr:`scale`), is laid out as GenoMap
        images. A seeded ``validation_fraction`` of cells is held out with masks fixed
        before training; each epoch trains on fresh masks of the other cells
        (:class:`~sctorch.tcer._data.MaskedBatches`) with Adam (β = 0.9, 0.999) and the
        learning rate halved every ``lr_step`` epochs, through :func:`sctorch.models.fit`,
        which stops after ``patience`` epochs without a lower held-out masked loss and
        keeps the best weights. The reference (ground truth) is never used.

        Parameters
        ----------
        adata
            Cells × genes of **raw counts** holding every gene of the model
            (matched by ``var_names``).
        layer
            Layer holding the counts (``None``: ``adata.X``).
        rng
            Seed (or Generator) of the split, the masks, the shuffling and the weight
            initialisation; the same seed on the same device gives the same model.
            Torch's and numpy's global random streams are left as they were.
        device
            Torch device (``None``: CUDA, then MPS, else CPU).
        progress
            Show a progress bar.

        Returns
        -------
        ``self``, trained; :attr:`history` holds ``train_loss`` and ``val_loss`` per epoch.

        Raises
        ------
        KeyError
            If ``layer`` is missing.
        ValueError
            If the input is not raw counts, a cell has zero counts, a model gene is
            missing from ``adata``, a setting is out of range or the loss diverges.
        """
        import torch

        from ..models import fit as fit_loop
        from ._data import MaskedBatches, split_cells
        from ._module import tcer_loss

        p = self.config
        p.validate()
        self._check_integrity()
        Xlog, top = self._log_counts(adata, layer, what="the training data")
        seed = seed_int(rng)
        dev = resolve_device(device)
        train_idx, val_idx = split_cells(adata.n_obs, p.validation_fraction, seed)
        self.scale = top if top > 0 else 1.0
        if callable(Xlog):  # backed: read each batch's cells from disk
            def images_of(idx):
                return self.placement.images(Xlog(idx) / self.scale)
        else:
            Xs = Xlog / self.scale

            def images_of(idx):
                return self.placement.images(Xs, cells=idx)
        blind = p.objective == "blind_spot"
        with seeded(seed):
            self.module = module = self._build_module(p, {}).to(dev)
            data = MaskedBatches(images_of, train_idx,
                                 val_idx, gene_px=self.placement.pixel_mask(),
                                 mask_ratio=p.mask_ratio, objective=p.objective,
                                 batch_size=p.batch_size, seed=seed, device=dev)

            def loss_fn(batch):
                x, inp, known = batch
                pred = module(inp[:, None]).squeeze(1)
                return tcer_loss(pred, x, known, p.fft_weight, squared=blind)

            self.history = {"train_loss": [], "val_loss": []}
            fit_loop(module, loss_fn, data, epochs=p.epochs, lr=p.lr, betas=(0.9, 0.999),
                     scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(
                         opt, step_size=max(p.lr_step, 1), gamma=0.5),
                     validate=(lambda: data.val_loss(module)) if data.val else None,
                     patience=p.patience, min_delta=1e-5, history=self.history,
                     desc="TCER train", progress=progress)
        return self

    # ------------------------------------------------------------------ inference
    def _predict_images(self, imgs: np.ndarray, device) -> np.ndarray:
        """Recover scaled images ``(n, H, W)``.

        ``objective="dropout"``: zero gene pixels get the placeholder and are predicted.
        ``"blind_spot"``: every gene pixel is predicted while hidden, in
        ``ceil(1 / mean ratio)`` passes over disjoint pixel groups (a fixed pattern, so
        results are deterministic). Either way an observed non-zero ``x`` becomes
        ``w·x + (1 − w)·prediction`` with ``w = observed_weight``.
        """
        import torch

        from ._module import PLACEHOLDER

        p = self.config
        gene_px = torch.as_tensor(self.placement.pixel_mask(), device=device)
        x = torch.as_tensor(imgs, device=device)
        self.module.eval()
        with torch.no_grad():
            if p.objective == "blind_spot":
                k = int(np.ceil(2.0 / sum(p.mask_ratio)))
                group = torch.as_tensor(np.random.default_rng(0).integers(
                    0, k, size=self.placement.shape), device=device)
                pred = torch.zeros_like(x)
                for g in range(k):
                    hide = gene_px & (group == g)
                    inp = torch.where(hide, torch.full_like(x, PLACEHOLDER), x)
                    out = self.module(inp[:, None]).squeeze(1).clamp_min(0.0)
                    pred = torch.where(hide, out, pred)
            else:
                inp = torch.where(gene_px & (x <= 0), torch.full_like(x, PLACEHOLDER), x)
                pred = self.module(inp[:, None]).squeeze(1).clamp_min(0.0)
        w = p.observed_weight
        pred = torch.where(x > 0, w * x + (1.0 - w) * pred, pred)
        pred = torch.where(gene_px, pred, torch.zeros_like(pred))
        return pred.float().cpu().numpy()

    def predict(self, adata: ad.AnnData, *, layer: str | None = None, genes=None,
                batch_size: int = 256, device: str | None = None, progress: bool = True,
                out=None) -> np.ndarray:
        """Imputed expression of ``adata``: float32 ``n_obs × n_genes``, **log1p-normalised**.

        The values :meth:`impute` writes (see there for inputs and errors); ``adata`` is
        not modified. Cells are read ``batch_size`` at a time, so ``adata`` may be opened
        with ``anndata.read_h5ad(path, backed="r")``: only one block of rows is in memory.

        Parameters
        ----------
        adata, layer, batch_size, device, progress
            As in :meth:`impute`.
        genes
            Names of the genes to return (columns in this order); ``None``: all of
            ``adata.var_names``. With a data set too large for an ``n_obs × n_vars`` array,
            ask for the genes you need.
        out
            Optional array-like of shape ``(n_obs, n_genes)`` to write into block by block
            (e.g. a :class:`numpy.memmap` or an ``h5py`` dataset: the result streams to a
            file); returned.

        Raises
        ------
        KeyError
            If ``layer`` or a name in ``genes`` is missing from ``adata``.
        ValueError
            As :meth:`impute`, or if ``out`` has the wrong shape.
        """
        if self.module is None:
            raise ValueError("This TCERModel has not been trained; call fit() first.")
        check_unique_var_names(adata)
        pos = self.gene_indexer(adata.var_names, min_shared=int(np.ceil(0.5 * len(self.genes))),
                                what="adata")
        cols = np.arange(adata.n_vars) if genes is None else _columns_of(adata, genes)
        X = check_counts_input(adata, layer)
        if out is None:
            out = np.empty((adata.n_obs, cols.size), dtype=np.float32)
        elif tuple(out.shape) != (adata.n_obs, cols.size):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected "
                             f"{(adata.n_obs, cols.size)}.")
        dev = resolve_device(device)
        self.to(dev)
        shared = np.flatnonzero(pos >= 0)
        src_cols = pos[shared]
        # model gene j (among shared) fills output column where[j], when it is asked for
        where = np.full(adata.n_vars, -1)
        where[cols] = np.arange(cols.size)
        keep = where[src_cols] >= 0
        for sl in progress_bar(list(iter_batches(adata.n_obs, batch_size)), desc="TCER impute",
                               progress=progress):
            Xlog = sparse.csr_matrix(log_normalize(read_rows(X, sl),
                                                   target_sum=self.config.target_sum))
            res = Xlog[:, cols].toarray().astype(np.float32)  # unknown genes keep observed
            block = np.zeros((sl.stop - sl.start, len(self.genes)), dtype=np.float32)
            block[:, shared] = Xlog[:, src_cols].toarray() / self.scale
            pred = self._predict_images(self.placement.images(block), dev)
            imputed = self.placement.genes_of(pred)[:, shared] * self.scale
            res[:, where[src_cols[keep]]] = imputed[:, keep]
            out[sl] = res
        return out

    def impute(self, adata: ad.AnnData, *, layer: str | None = None, batch_size: int = 256,
               device: str | None = None, key_added: str = _keys.TCER, progress: bool = True,
               copy: bool = False) -> ad.AnnData | None:
        """Impute cells (seen in training or new) with this model.

        Parameters
        ----------
        adata
            Cells × genes of **raw counts**. Genes are matched to the model's gene list by
            name: model genes missing from ``adata`` are treated as unobserved (zero) and
            reported in a warning; genes the model does not know keep their
            log-normalised observed values.
        layer
            Layer holding the counts (``None``: ``adata.X``).
        batch_size
            Cells per inference batch.
        device
            Torch device (``None``: CUDA, MPS, else CPU); the model is moved there.
        key_added
            Output layer name.
        progress
            Show a progress bar.
        copy
            Return a copy instead of writing into ``adata``.

        Returns
        -------
        ``None`` or a copy, with ``layers[key_added]``: dense float32 ``n_obs × n_vars``
        on the **log1p-normalised** scale (``log1p(counts / library × target_sum)``).

        Raises
        ------
        KeyError
            If ``layer`` is missing.
        ValueError
            If the model is untrained, the input is not raw counts, a cell has zero
            counts, or ``adata`` shares fewer than half of the model's genes (says how many).
        """
        out = self.predict(adata, layer=layer, batch_size=batch_size, device=device,
                           progress=progress)
        target = adata.copy() if copy else adata
        target.layers[key_added] = out
        return target if copy else None

    def params_record(self) -> dict[str, Any]:
        """The hyper-parameters as a flat dict (without ``extra``), for ``uns`` records."""
        return {k: v for k, v in dataclasses.asdict(self.config).items() if k != "extra"}


def _columns_of(adata: ad.AnnData, genes) -> np.ndarray:
    """Positions of ``genes`` (names) in ``adata.var_names``; KeyError naming the missing."""
    names = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
    idx = adata.var_names.get_indexer(names)
    if (idx < 0).any():
        missing = [g for g, i in zip(names, idx, strict=True) if i < 0]
        raise KeyError(f"{len(missing)} of the requested genes are not in adata.var_names, "
                       f"e.g. {missing[:5]}.")
    return idx
