"""TCERModel: ER-Net trained on GenoMap images of one data set, with its placement and scale."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_cell_totals,
    check_not_empty,
    check_unique_var_names,
    clamp_setting,
    describe_source,
    get_matrix,
    get_rng,
    iter_batches,
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
from ._config import TCERConfig
from ._context import Rates, neighbour_index, neighbour_mean, posterior, to_rates
from ._mcv import choose_neighbours, choose_prior_on, prior_score, split_molecules

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger("sctorch")

#: Most GenoMaps ER-Net sees in one inference call (:meth:`TCERModel._predict_images`).
NETWORK_CHUNK = 64


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
        :class:`TCERConfig`.
    genes
        The model's genes, in placement order.
    history
        ``{"train_loss": [...], "val_loss": [...]}`` per epoch.
    placement
        :class:`sctorch.genomap.Placement` of ``genes`` (every gene on its own pixel).
    scale
        Divisor that maps log-normalised values to the network's input range (the
        largest log-normalised value of the training data).
    n_neighbors
        Neighbours in the cross-cell context (0: none), as fitted.
    beta
        Prior weight β of the posterior output (units of library / ``target_sum``), as
        fitted: a float, or float64 ``(n_genes,)`` (one per model gene, in the order of
        :attr:`genes`) with ``shrinkage="gene"``; ``None`` before :meth:`fit` or with
        ``output="observed"``.
    use_network
        Whether the output's prior is ER-Net's prediction (``True``) or the neighbour mean
        (``False``), as fitted (:attr:`TCERConfig.prior`).
    """

    config_cls = TCERConfig

    def __init__(
        self,
        module=None,
        *,
        config: TCERConfig | None = None,
        genes=(),
        history: dict[str, list[float]] | None = None,
        placement: Placement | None = None,
        scale: float = 1.0,
        n_neighbors: int = 0,
        beta: float | np.ndarray | None = None,
        use_network: bool = True,
    ):
        super().__init__(module, config=config, genes=genes, history=history)
        self.placement = placement
        self.scale = float(scale)
        self.n_neighbors = int(n_neighbors)
        self.beta = beta if beta is None or np.ndim(beta) == 0 else np.asarray(beta, np.float64)
        self.use_network = bool(use_network)
        self.selection: dict[str, dict] = {}

    @property
    def params(self) -> TCERConfig:
        """The hyper-parameters (:attr:`config`)."""
        return self.config

    @classmethod
    def from_genomap(
        cls,
        adata: ad.AnnData,
        config: TCERConfig | None = None,
        *,
        genomap_key: str = _keys.GENOMAP,
    ) -> TCERModel:
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
            raise ValueError(
                f"GenoMap {genomap_key!r} leaves {int((placement.rows < 0).sum())} "
                "gene(s) of adata unplaced; TCER needs every gene on the map. Subset "
                "adata to the placed genes or rebuild the GenoMap on all genes."
            )
        return cls(config=config, genes=list(map(str, adata.var_names)), placement=placement)

    # ------------------------------------------------------------------ BaseModel hooks
    @classmethod
    def _build_module(cls, config: TCERConfig, extra: dict[str, Any]):
        """ER-Net of ``config`` (``n_features``, ``n_dfa``): the one constructor."""
        from ._module import ERNet

        return ERNet(
            config.n_features,
            config.n_dfa,
            in_channels=1 if config.n_neighbors == 0 else 2,
            deformable=config.deformable,
        )

    @classmethod
    def validate_header(cls, config, genes, extra):
        """The config's checks, then the fitted values kept in ``extra`` (before any build).

        Raises
        ------
        ValueError
            If the grid ``shape``, the image ``scale``, the fitted ``n_neighbors`` or
            ``beta`` is of the wrong type or out of range.
        """
        cfg = super().validate_header(config, genes, extra)
        shape = extra.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(v, int) and v >= 1 for v in shape)
        ):
            raise ValueError(f"extra 'shape' must be [H, W] of positive integers, got {shape!r}.")
        scale = extra.get("scale")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            raise ValueError(f"extra 'scale' must be a positive number, got {scale!r}.")
        if not np.isfinite(scale):
            raise ValueError(f"extra 'scale' must be finite, got {scale!r}.")
        k = extra.get("n_neighbors", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"extra 'n_neighbors' must be an integer >= 0, got {k!r}.")
        beta = extra.get("beta")
        if beta is not None and (
            isinstance(beta, bool)
            or not isinstance(beta, int | float)
            or not np.isfinite(beta)
            or beta < 0
        ):
            raise ValueError(f"extra 'beta' must be None or a finite number >= 0, got {beta!r}.")
        if not isinstance(extra.get("use_network", True), bool):
            raise ValueError(
                f"extra 'use_network' must be true or false, got {extra['use_network']!r}."
            )
        return cfg

    def _extra_state(self):
        p = self.placement
        return (
            {
                "shape": [int(s) for s in p.shape],
                "scale": self.scale,
                "n_neighbors": self.n_neighbors,
                "beta": None if self.beta is None or np.ndim(self.beta) else float(self.beta),
                "use_network": self.use_network,
            },
            {
                "placement_rows": np.asarray(p.rows, dtype=np.int64),
                "placement_cols": np.asarray(p.cols, dtype=np.int64),
                **(
                    {"beta_per_gene": np.asarray(self.beta, dtype=np.float64)}
                    if self.beta is not None and np.ndim(self.beta)
                    else {}
                ),
            },
        )

    def _set_extra_state(self, extra, arrays) -> None:
        self.placement = Placement(
            arrays["placement_rows"].astype(np.int64),
            arrays["placement_cols"].astype(np.int64),
            tuple(int(s) for s in extra["shape"]),
        )
        self.scale = float(extra["scale"])
        self.n_neighbors = int(extra.get("n_neighbors", 0))
        beta = extra.get("beta")
        self.beta = None if beta is None else float(beta)
        if "beta_per_gene" in arrays:
            self.beta = np.asarray(arrays["beta_per_gene"], dtype=np.float64)
        self.use_network = bool(extra.get("use_network", True))  # older files: the network

    def _check_integrity(self) -> None:
        """The placement is one-to-one on its grid, places every gene, and fits the gene list."""
        p = self.placement
        if p is None:
            raise ValueError("the model has no GenoMap placement.")
        n_r, n_c = len(np.ravel(p.rows)), len(np.ravel(p.cols))
        if not n_r == n_c == len(self.genes):
            raise ValueError(
                f"the gene list has {len(self.genes)} genes but the placement has "
                f"{n_r} rows and {n_c} columns; they must have one length."
            )
        p.check(what="The model's GenoMap placement")
        b = self.beta
        if (
            b is not None
            and np.ndim(b)
            and (np.shape(b) != (len(self.genes),) or not np.all(np.isfinite(b)) or np.any(b < 0))
        ):
            raise ValueError(
                f"the per-gene beta must hold one finite value >= 0 per gene "
                f"({len(self.genes)}), got shape {np.shape(b)} with minimum "
                f"{np.min(b) if np.size(b) else 'none'}."
            )
        if (p.rows < 0).any():
            raise ValueError(
                f"the model's GenoMap placement leaves {int((p.rows < 0).sum())} "
                "gene(s) unplaced; TCER needs every gene on the map."
            )
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"the input scale must be a positive number, got {self.scale!r}.")

    # ------------------------------------------------------------------ training
    def _rates(self, adata: ad.AnnData, layer: str | None, what: str, *, all_genes: bool):
        """:class:`~sctorch.tcer._context.Rates` of the model's genes in ``adata``, validated.

        ``all_genes``: every model gene must be in ``adata`` (training); otherwise at
        least half. Returns ``(rates, shared, pos)``: ``shared`` the model positions of the
        genes ``adata`` holds (the columns of ``rates``), ``pos`` the position in ``adata``
        of every model gene (-1: missing).
        """
        pos = self.gene_indexer(
            adata.var_names,
            what=what,
            min_shared=len(self.genes) if all_genes else int(np.ceil(0.5 * len(self.genes))),
        )
        X = check_counts_input(adata, layer)
        shared = np.flatnonzero(pos >= 0)
        cols = None if np.array_equal(pos, np.arange(adata.n_vars)) else pos[shared]
        return Rates(X, cols, self.config.target_sum), shared, pos

    def _images(
        self, own: np.ndarray, context: np.ndarray | None, shared: np.ndarray
    ) -> np.ndarray:
        """Scaled network input ``(n, C, H, W)`` from rates of the shared genes.

        ``own``: the cells' rates ``(n, n_shared)``; ``context``: their neighbours' mean
        rates (``None``: no context channel); ``shared``: the model positions of their
        columns. Model genes not in the data are 0.
        """

        def image(values):
            block = np.zeros((values.shape[0], len(self.genes)), dtype=np.float32)
            block[:, shared] = np.log1p(values) / self.scale
            return self.placement.images(block)

        imgs = [image(own)] + ([] if context is None else [image(context)])
        return np.stack(imgs, axis=1)

    def _cell_images(
        self, rates, own, cells, idx: np.ndarray | None, shared: np.ndarray
    ) -> np.ndarray:
        """:meth:`_images` of ``cells`` with rates ``own`` (context from the neighbours ``idx``)."""
        ctx = None if idx is None else neighbour_mean(rates, idx, cells, self.config.space)
        return self._images(own, ctx, shared)

    def _split_images(self, rates, idx: np.ndarray | None, shared: np.ndarray):
        """``objective="noise2noise"``'s training pairs: ``(cells, rng) -> (inputs, target)``.

        Each cell's counts are split binomially, a fraction ``f`` drawn per cell from
        :data:`~sctorch.tcer._config.SPLIT_FRACTION` to the input part; each part's rates are
        its counts over ``f`` (or ``1 − f``) × the cell's size, so both estimate the same
        rate. ``inputs``: :meth:`_images` of the input part with the context (the
        neighbours' full counts: no molecule of the cell); ``target``: the other part's
        scaled image ``(n, H, W)``.
        """
        from ._config import SPLIT_FRACTION

        space = self.config.space

        def split_of(cells, rng):
            counts, size = rates.counts(cells)
            frac = rng.uniform(*SPLIT_FRACTION, size=len(cells))
            # each part normalised by its expected share, so both estimate the cell's rate
            (part, _), (rest, _) = split_molecules(counts, size, rng, p=frac)
            ctx = None if idx is None else neighbour_mean(rates, idx, cells, space)
            inputs = self._images(to_rates(part, size * frac).toarray(), ctx, shared)
            target = self._images(to_rates(rest, size * (1.0 - frac)).toarray(), None, shared)
            return inputs, target[:, 0]

        return split_of

    def _neighbours(self, rates, seed: int) -> np.ndarray | None:
        """The cross-cell neighbour index of the cells of ``rates`` (``None``: no context)."""
        if self.n_neighbors == 0:
            return None
        return neighbour_index(rates, self.n_neighbors, seed=seed)

    def fit(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        rng: RandomState = 0,
        device: str | None = None,
        progress: bool = True,
    ) -> TCERModel:
        """Train ER-Net on the observed data only (TCER eqs. 12–16), then choose the output.

        The cells' log-normalised expression (``log1p(counts / library × target_sum)``),
        divided by its largest value (stored as :attr:`scale`), is laid out as GenoMap
        images. With the cross-cell context (``n_neighbors`` ≠ 0) a second channel holds
        the GenoMap of the mean rates of the cell's nearest other cells, and ER-Net
        predicts a residual on it; ``n_neighbors=None`` chooses the number of neighbours
        from :data:`~sctorch.tcer._mcv.K_GRID` by molecular cross-validation
        (:func:`~sctorch.tcer._mcv.choose_neighbours`, on up to 3,000 cells).
        A seeded ``validation_fraction`` of cells is held out with masks fixed
        before training; each epoch trains on fresh masks of the other cells
        (:class:`~sctorch.tcer._data.MaskedBatches`) with Adam (β = 0.9, 0.999) and the
        learning rate halved every ``lr_step`` epochs, through :func:`sctorch.models.fit`,
        which stops after ``patience`` epochs without a lower held-out masked loss and
        keeps the best weights. With ``output="posterior"``, the prior (:attr:`use_network`:
        ER-Net's prediction or, with ``prior="auto"`` when it scores no higher, the
        neighbour mean it starts from) and, with ``beta=None``, its weight :attr:`beta` are
        then chosen by molecular cross-validation on the held-out cells
        (:meth:`_choose_output`). ``prior="context"`` trains nothing. The reference
        (ground truth) is never used.

        Parameters
        ----------
        adata
            Cells × genes of **raw counts** holding every gene of the model
            (matched by ``var_names``). May be backed (``anndata.read_h5ad(path,
            backed="r")``): batches are then read from the file.
        layer
            Layer holding the counts (``None``: ``adata.X``).
        rng
            Seed (or Generator) of the split, the masks, the shuffling, the molecular
            cross-validation splits and the weight initialisation; the same seed on the
            same device gives the same model. Torch's and numpy's global random streams
            are left as they were.
        device
            Torch device (``None``: CUDA, then MPS, else CPU).
        progress
            Show a progress bar.

        Returns
        -------
        ``self``, trained; :attr:`history` holds ``train_loss`` and ``val_loss`` per epoch,
        :attr:`selection` the molecular cross-validation scores behind ``n_neighbors`` and
        ``beta``.

        Raises
        ------
        KeyError
            If ``layer`` is missing.
        ValueError
            If the input is not raw counts, a cell has zero counts, a model gene is
            missing from ``adata``, a setting is out of range, the cross-cell context is
            asked for with fewer than 2 cells, or the loss diverges.
        """
        import torch

        from ..models import fit as fit_loop
        from ._data import MaskedBatches, split_cells
        from ._module import training_loss

        p = self.config
        p.validate()
        self._check_integrity()
        rates, shared, _ = self._rates(adata, layer, "the training data", all_genes=True)
        seed = seed_int(rng)
        dev = resolve_device(device)
        train_idx, val_idx = split_cells(adata.n_obs, p.validation_fraction, seed)
        top = max(
            (
                _max_log_normalised(read_rows(rates.X, sl), rates.cols, p.target_sum)
                for sl in iter_batches(rates.n, 8192)
            ),
            default=0.0,
        )
        self.scale = top if top > 0 else 1.0
        self.selection = {}
        if p.n_neighbors is None:
            cells = np.arange(rates.n)
            if rates.n > 3000:
                cells = np.sort(get_rng(seed).choice(rates.n, 3000, replace=False))
            self.n_neighbors, self.selection["n_neighbors"] = choose_neighbours(
                rates, seed=seed, cells=cells, criterion=p.criterion, space=p.space
            )
        else:
            self.n_neighbors = clamp_setting(
                "n_neighbors",
                int(p.n_neighbors),
                rates.n - 1,
                why=f"the training data have {rates.n} cells",
            )
        idx = self._neighbours(rates, seed)
        scale = self.scale
        with seeded(seed):
            self.module = module = self.build_module(p, {}).to(dev)
            if p.poisson:  # start from the context itself (a zero log-ratio)
                torch.nn.init.zeros_(module.out.weight)
                torch.nn.init.zeros_(module.out.bias)
            data = MaskedBatches(
                lambda cells: self._cell_images(
                    rates, rates.rates(cells).toarray(), cells, idx, shared
                ),
                train_idx,
                val_idx,
                gene_px=self.placement.pixel_mask(),
                mask_ratio=p.mask_ratio,
                objective=p.objective,
                batch_size=p.batch_size,
                seed=seed,
                device=dev,
                scale=scale,
                max_cells=p.max_cells_per_epoch,
                split_of=self._split_images(rates, idx, shared) if p.split else None,
            )

            def loss_fn(batch):
                return training_loss(
                    module, batch, objective=p.objective, fft_weight=p.fft_weight, scale=scale
                )

            self.history = {"train_loss": [], "val_loss": []}
            if p.prior == "context":  # the neighbour mean alone: nothing to train
                self.use_network = False
                self._choose_output(rates, idx, shared, val_idx, seed, dev)
                return self
            fit_loop(
                module,
                loss_fn,
                data,
                epochs=p.epochs,
                lr=p.lr,
                betas=(0.9, 0.999),
                scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(
                    opt, step_size=max(p.lr_step, 1), gamma=0.5
                ),
                validate=(lambda: data.val_loss(module)) if data.val else None,
                patience=p.patience,
                min_delta=1e-5,
                history=self.history,
                desc="TCER train",
                progress=progress,
            )
        self.use_network = True
        self._choose_output(rates, idx, shared, val_idx, seed, dev)
        return self

    def _choose_output(self, rates, idx, shared, val_idx, seed: int, dev) -> None:
        """:attr:`beta` and :attr:`use_network` by molecular cross-validation (held-out cells).

        On the held-out cells (all if fewer than 50; at most 3,000), the counts are split
        into halves; each candidate prior is computed from half A (the network: own
        GenoMap of A and the other cells' context; the neighbour mean: the other cells
        only), so no molecule of half B enters it, and its posterior is scored against B
        (:func:`~sctorch.tcer._mcv.choose_prior_on`). Candidates: the neighbour mean
        and ER-Net with ``prior="auto"`` (the neighbour mean first: it wins a tie),
        the one asked for otherwise. Nothing is chosen with ``output="observed"``, or
        with one candidate and a given ``beta``.
        """
        p = self.config
        self.beta = p.beta
        if p.output != "posterior":
            return
        candidates = {}
        if self.n_neighbors > 0 and p.prior in ("auto", "context"):
            candidates["context"] = lambda own, positions: neighbour_mean(
                rates, idx, positions, p.space
            )
        if not (self.n_neighbors > 0 and p.prior == "context"):
            candidates["network"] = lambda own, positions: self._prior(
                self._cell_images(rates, own, positions, idx, shared), dev, shared
            )
        if len(candidates) == 1 and p.beta is not None:
            self.use_network = "network" in candidates
            return
        cells = val_idx if len(val_idx) >= 50 else np.arange(rates.n)
        if cells.size > 3000:
            cells = np.sort(get_rng(seed).choice(cells, 3000, replace=False))
        name, self.beta, scores = choose_prior_on(
            rates,
            cells,
            candidates,
            seed=seed,
            beta=p.beta,
            criterion=p.criterion,
            space=p.space,
            shrinkage=p.shrinkage,
        )
        self.use_network = name == "network"
        self.selection["beta"] = scores[name]
        if len(candidates) > 1:
            self.selection["prior"] = {n: prior_score(v) for n, v in scores.items()}

    def _prior(self, imgs: np.ndarray, device, shared: np.ndarray) -> np.ndarray:
        """The network's blind-spot prediction as prior mean rates ``(n, n_shared)``."""
        pred = self._predict_images(imgs, device)
        return np.expm1(self.placement.genes_of(pred)[:, shared] * self.scale)

    # ------------------------------------------------------------------ inference
    def _predict_images(self, imgs: np.ndarray, device) -> np.ndarray:
        """The network's prediction of every gene pixel, scaled ``(n, H, W)``.

        ``imgs`` is the network input ``(n, C, H, W)`` (channel 0 the cells' own images).
        ``objective="dropout"``: zero gene pixels get the placeholder and are predicted.
        ``"noise2noise"``: the input as it is (nothing hidden: the network was trained to
        predict held-out molecules from all pixels).
        ``"blind_spot"``, ``"poisson"`` and ``"sqrt"``: every gene pixel is predicted while
        hidden, in ``ceil(1 / largest mask ratio)`` passes over disjoint pixel groups (the
        fewest passes whose hidden fraction training covered; a fixed pattern, so
        results are deterministic); for ``"poisson"`` the predicted rate is returned as a
        scaled ``log1p`` image.

        The network sees at most :data:`NETWORK_CHUNK` images at a time, whatever ``n``:
        its activations, not the cells, set the peak memory of inference (a batch of 256
        GenoMaps took about 0.5 GB more than one of 64, at no gain in speed on the CPU).
        """
        import torch

        from ._module import PLACEHOLDER

        p = self.config
        gene_px = torch.as_tensor(self.placement.pixel_mask(), device=device)
        if p.blind_spot:
            k = int(np.ceil(1.0 / max(p.mask_ratio)))
            group = torch.as_tensor(
                np.random.default_rng(0).integers(0, k, size=self.placement.shape),
                device=device,
            )
            hidden = [gene_px & (group == g) for g in range(k)]
        out = np.empty((imgs.shape[0], *imgs.shape[2:]), dtype=np.float32)
        self.module.eval()
        with torch.no_grad():
            for sl in iter_batches(imgs.shape[0], NETWORK_CHUNK):
                inp = torch.tensor(imgs[sl], device=device)  # a copy: channel 0 is rewritten
                x = inp[:, 0].clone()
                placeholder = torch.full_like(x, PLACEHOLDER)
                if p.blind_spot:
                    pred = torch.zeros_like(x)
                    for hide in hidden:
                        inp[:, 0] = torch.where(hide, placeholder, x)
                        pred = torch.where(hide, self._network(inp), pred)
                else:
                    if not p.split:  # "dropout": the zeros are predicted
                        inp[:, 0] = torch.where(gene_px & (x <= 0), placeholder, x)
                    pred = self._network(inp)
                pred = torch.where(gene_px, pred, torch.zeros_like(pred))
                out[sl] = pred.float().cpu().numpy()
        return out

    def _network(self, inputs):
        """ER-Net's scaled ``log1p`` prediction for a batch of inputs (``predicted_image``)."""
        from ._module import predicted_image

        return predicted_image(
            self.module, inputs, objective=self.config.objective, scale=self.scale
        )

    def predict(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        genes=None,
        batch_size: int = 256,
        device: str | None = None,
        progress: bool = True,
        out=None,
    ) -> np.ndarray:
        """Imputed expression of ``adata``: float32 ``n_obs × n_genes``, **log1p-normalised**.

        The values :meth:`impute` writes (see there for inputs and errors); ``adata`` is
        not modified. Cells are read ``batch_size`` at a time, so ``adata`` may be opened
        with ``anndata.read_h5ad(path, backed="r")``: only one block of rows (and, with the
        cross-cell context, the rows of its cells' neighbours and an ``n_obs × 30`` PCA
        embedding, fitted in blocks) is in memory.

        With the cross-cell context (:attr:`n_neighbors` > 0) each cell's neighbours are
        found among the cells of ``adata`` (a PCA of their log-normalised counts, as in
        training), so a cell's imputation depends on the other cells imputed with it,
        as with MAGIC or kNN smoothing; impute a data set in one call, not cell by cell.

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
        if self.config.output == "posterior" and self.beta is None:
            raise ValueError(
                "This TCERModel has output='posterior' but no fitted beta; "
                "call fit() first or set config.beta."
            )
        check_unique_var_names(adata)
        rates, shared, pos = self._rates(adata, layer, "adata", all_genes=False)
        cols = np.arange(adata.n_vars) if genes is None else _columns_of(adata, genes)
        if out is None:
            out = np.empty((adata.n_obs, cols.size), dtype=np.float32)
        elif tuple(out.shape) != (adata.n_obs, cols.size):
            raise ValueError(
                f"out has shape {tuple(out.shape)}, expected {(adata.n_obs, cols.size)}."
            )
        dev = resolve_device(device)
        self.to(dev)
        idx = self._neighbours(rates, seed=0)
        src_cols = pos[shared]
        # model gene j (among shared) fills output column where[j], when it is asked for
        where = np.full(adata.n_vars, -1)
        where[cols] = np.arange(cols.size)
        keep = where[src_cols] >= 0
        for sl in progress_bar(
            list(iter_batches(adata.n_obs, batch_size)), desc="TCER impute", progress=progress
        ):
            block = read_rows(rates.X, sl)  # read once: output, input images and posterior
            Xlog = sparse.csr_matrix(log_normalize(block, target_sum=self.config.target_sum))
            res = Xlog[:, cols].toarray().astype(np.float32)  # unknown genes keep observed
            counts, size = rates.counts_of(block)
            if self.use_network or self.config.output != "posterior":
                own = to_rates(counts, size).toarray()
                imgs = self._cell_images(rates, own, sl, idx, shared)
                mu = None
            else:  # the neighbour mean is the prior: no image, no network pass
                imgs, mu = None, neighbour_mean(rates, idx, sl, self.config.space)
            imputed = self._output(counts, size, imgs, dev, shared, mu=mu)
            res[:, where[src_cols[keep]]] = imputed[:, keep]
            out[sl] = res
        return out

    def _output(
        self, counts, size, imgs: np.ndarray | None, device, shared: np.ndarray, *, mu=None
    ) -> np.ndarray:
        """The output rule on the shared genes, log1p-normalised ``(n, n_shared)``.

        ``counts`` and ``size``: the cells' counts of the shared genes and library /
        ``target_sum``; ``imgs``: their network input; ``mu``: the prior mean rates when
        they are not the network's (the neighbour mean, :attr:`use_network` false).

        ``output="posterior"``: ``log1p`` of the posterior rate with μ the network's prior
        mean rate or the given ``mu`` (:func:`~sctorch.tcer._context.posterior`, on the
        config's ``space``).
        ``"observed"``: a zero gets the prediction; an observed non-zero ``x`` becomes
        ``w·x + (1 − w)·prediction`` with ``w = observed_weight`` (the paper keeps measured
        values, ``w = 1``).
        """
        if self.config.output == "posterior":
            mu = self._prior(imgs, device, shared) if mu is None else mu
            beta = self.beta if np.ndim(self.beta) == 0 else self.beta[shared]
            return np.log1p(posterior(counts, size, mu, beta, self.config.space))
        pred = self.placement.genes_of(self._predict_images(imgs, device))[:, shared]
        x = self.placement.genes_of(imgs[:, 0])[:, shared]
        w = self.config.observed_weight
        return (np.where(x > 0, w * x + (1.0 - w) * pred, pred) * self.scale).astype(np.float32)

    def impute(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        batch_size: int = 256,
        device: str | None = None,
        key_added: str = _keys.TCER,
        progress: bool = True,
        copy: bool = False,
    ) -> ad.AnnData | None:
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
        Model genes are given the model's output rule (``output="posterior"``:
        ``log1p((y + β μ) / (s + β))``; ``"observed"``: measured values kept, zeros
        filled), see :func:`sctorch.tl.tcer_impute`.

        Raises
        ------
        KeyError
            If ``layer`` is missing.
        ValueError
            If the model is untrained, the input is not raw counts, a cell has zero
            counts, ``adata`` shares fewer than half of the model's genes (says how many),
            or the model uses the cross-cell context and ``adata`` has fewer than 2 cells.
        """
        out = self.predict(
            adata, layer=layer, batch_size=batch_size, device=device, progress=progress
        )
        target = adata.copy() if copy else adata
        target.layers[key_added] = out
        return target if copy else None

    def params_record(self) -> dict[str, Any]:
        """The hyper-parameters as a flat dict (without ``extra``), for ``uns`` records."""
        return {k: v for k, v in dataclasses.asdict(self.config).items() if k != "extra"}


def _max_log_normalised(block, cols, target_sum: float) -> float:
    """Largest log-normalised value of the columns ``cols`` (``None``: all) of a counts block.

    Computed with :func:`sctorch._utils.log_normalize` (Scanpy), the normalisation
    :meth:`TCERModel.predict` gives genes the model does not know. (Its first call in a
    process also settles the OpenMP thread count that Scanpy's numba kernels reset,
    before training starts, so two trainings in one process compute alike.)
    """
    Xlog = sparse.csr_matrix(log_normalize(block, target_sum=target_sum), dtype=np.float32)
    Xlog = Xlog if cols is None else Xlog[:, cols]
    return float(Xlog.data.max()) if Xlog.nnz else 0.0


def _columns_of(adata: ad.AnnData, genes) -> np.ndarray:
    """Positions of ``genes`` (names) in ``adata.var_names``; KeyError naming the missing."""
    names = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
    idx = adata.var_names.get_indexer(names)
    if (idx < 0).any():
        missing = [g for g, i in zip(names, idx, strict=True) if i < 0]
        raise KeyError(
            f"{len(missing)} of the requested genes are not in adata.var_names, e.g. {missing[:5]}."
        )
    return idx
