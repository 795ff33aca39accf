"""StImputeModel: a fitted stImpute (autoencoder + gene GNN + the reference it reads).

Zeng et al. 2024, Commun Biol 7:1271, §Methods eqs. 1–13; authors' code:
github.com/cquzys/stImpute. :func:`sctorch.tl.stimpute` and :func:`sctorch.tl.stimpute_cv`
are thin wrappers over this class.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._config import renamed
from .._utils import (
    RandomState,
    progress_bar,
    resolve_device,
    seed_int,
    seeded,
)
from ..models import BaseModel
from . import _train as T
from . import _transfer as X
from ._config import StImputeConfig
from ._data import (
    CellData,
    Inputs,
    Matched,
    check_anndata,
    check_neighbors,
    columns,
    fold,
    match_genes,
    normalised,
    prepare,
    section_columns,
    select_genes,
    warn_case,
)
from ._graph import distance_graph, embedding_table, similarity_for

logger = logging.getLogger("sctorch")


def legacy_layers(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept the old ``layer_sp`` / ``layer_ref`` as ``layer`` / ``ref_layer``.

    ``kwargs`` is changed in place and returned; the old names give a ``FutureWarning``.

    Raises
    ------
    TypeError
        If both an old and its new name are given.
    """
    renamed(kwargs, old="layer_sp", new="layer", where=where)
    return renamed(kwargs, old="layer_ref", new="ref_layer", where=where)


def _no_other_keywords(kwargs: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}.")


def _self_cells(n_ref: int, seed: int) -> np.ndarray:
    """The reference cells of the final self-prediction (all, or a seeded subset)."""
    if n_ref <= X.SELF_CELLS:
        return np.arange(n_ref)
    return np.sort(np.random.default_rng(seed + 1).choice(n_ref, X.SELF_CELLS, replace=False))


class StImputeModel(BaseModel):
    r"""A fitted stImpute: predicts reference genes for spatial sections.

    ``fit`` learns, from the genes a spatial section shares with a scRNA-seq reference,
    how to predict the reference's other genes, and scores them (reliability);
    ``predict`` applies it to the cells of that section **or of a new section** (same
    genes, raw counts or log1p-normalised; in memory or opened with
    ``anndata.read_h5ad(path, backed="r")``, read by blocks of cells).

    ``method="transfer"`` (default, :mod:`sctorch.stimpute._transfer`): k-NN mean + ridge
    transfer in a PCA (or autoencoder) space, ``k`` and the blend weight chosen by inner
    gene cross-validation. ``method="gnn"``: the paper's autoencoder + gene GNN (eqs. 1–12).

    Parameters
    ----------
    module
        ``torch.nn.ModuleDict`` holding ``"autoencoder"`` (latent ``"autoencoder"`` or
        method ``"gnn"``) and ``"gnn"`` (method ``"gnn"``); empty for the PCA transfer;
        ``None`` before :meth:`fit`.
    config
        A :class:`StImputeConfig` (e.g. ``StImputeConfig.preset("paper")``; default: the
        ``"default"`` preset). Its size-dependent ``None`` settings are filled in at fit
        (:meth:`StImputeConfig.resolved`).
    genes
        The training genes (the latent space's inputs, spatial spelling, in model order).
    history
        Per-epoch losses of the training steps (``autoencoder_loss``, ``gnn_loss``,
        ``autoencoder_refit_loss``, ``reliability_gnn_loss``, ``reliability_loss``).
    **hyper
        Settings of :class:`StImputeConfig` given one by one; they override ``config``.

    Notes
    -----
    Model state besides the weights, all in the saved file (:meth:`save`): ``targets``
    (the predictable genes, reference spelling), ``reliability`` per target, the chosen
    ``k`` and blend weight, the PCA and ridge coefficients (transfer) or the gene graph
    (GNN), and the **normalised reference expression of the training and target genes**
    as CSR arrays (float32 values + int32 column indices: at most 8 bytes per reference
    cell × gene, less for sparse data; plus 8 bytes per reference cell). The reference
    dominates the file: 10,000 reference cells × 20,000 genes at 10 % non-zeros take
    about 160 MB.
    """

    config_cls = StImputeConfig

    def __init__(
        self, module=None, *, config: StImputeConfig | None = None, genes=(), history=None, **hyper
    ):
        if hyper:
            config = (config or StImputeConfig()).replace(**hyper)
        if config is not None:
            config.validate()
        super().__init__(module, config=config, genes=genes, history=history)
        self.targets: list[str] = []
        self.reliability = np.zeros(0, np.float32)
        self.alpha = np.nan  # GNN weight (method "gnn") or ridge weight (method "transfer")
        self.k = 0
        self.info: dict[str, Any] = {}
        self._ref = None  # (n_ref, n_train + n_targets) normalised reference
        self._graph = None  # (n_train + n_targets,)² CSR gene graph (method "gnn")
        self._pca = None
        self._ridge = None
        self._paper_scale = np.nan

    # ------------------------------------------------------------------ state
    @classmethod
    def _config_from_dict(cls, d: dict[str, Any]) -> StImputeConfig:
        # files written before the config had ``design`` name it ``preset``
        cfg = super()._config_from_dict(StImputeConfig.from_saved(d))
        cfg.validate()
        return cfg

    @classmethod
    def _build_module(cls, config: StImputeConfig, extra: dict[str, Any]):
        import torch

        mods = T.torch_modules()
        parts = {}
        with torch.random.fork_rng(devices=[]):  # building must not move the user's stream
            if config.method == "gnn" or config.latent == "autoencoder":
                parts["autoencoder"] = mods.CellAutoEncoder(
                    int(extra["n_train"]), config.latent_dim
                )
            if config.method == "gnn":
                parts["gnn"] = T.gnn_module(config, int(extra["k"]))
        return torch.nn.ModuleDict(parts)

    def _extra_state(self):
        ref = sparse.csr_matrix(self._ref, dtype=np.float32)
        extra = {
            "n_train": len(self.genes),
            "targets": self.targets,
            "alpha": self.alpha,
            "k": int(self.k),
            "paper_scale": float(self._paper_scale),
            "ref_shape": list(ref.shape),
            "info": self.info,
        }
        arrays = {
            "ref_data": ref.data.astype(np.float32),
            "ref_indices": ref.indices.astype(np.int32),
            "ref_indptr": ref.indptr.astype(np.int64),
            "reliability": np.asarray(self.reliability, np.float32),
        }
        if self._graph is not None:
            arrays.update(
                graph_indices=self._graph.indices.astype(np.int64),
                graph_indptr=self._graph.indptr.astype(np.int64),
                graph_data=self._graph.data.astype(np.float32),
            )
        for part in (self._pca, self._ridge):
            if part is not None:
                arrays.update(part.arrays())
        return extra, arrays

    def _set_extra_state(self, extra, arrays):
        self.targets = [str(g) for g in extra["targets"]]
        self.alpha, self.k = float(extra["alpha"]), int(extra["k"])
        self._paper_scale = float(extra["paper_scale"])
        self.info = dict(extra["info"])
        self.reliability = arrays["reliability"]
        n_ref, n_all = (int(v) for v in extra["ref_shape"])
        self._ref = sparse.csr_matrix(
            (arrays["ref_data"], arrays["ref_indices"], arrays["ref_indptr"]), shape=(n_ref, n_all)
        )
        self._ref.check_format(full_check=True)  # index bounds, lengths: raises ValueError
        if "graph_indptr" in arrays:
            self._graph = sparse.csr_matrix(
                (arrays["graph_data"], arrays["graph_indices"], arrays["graph_indptr"]),
                shape=(n_all, n_all),
            )
            self._graph.check_format(full_check=True)
        if "pca_components" in arrays:
            self._pca = X.PcaSpace.from_arrays(arrays)
        if "ridge_coef" in arrays:
            self._ridge = X.Ridge.from_arrays(arrays)

    def _check_integrity(self):
        n_train = len(self.genes)
        if (
            "autoencoder" in self.module
            and self.module["autoencoder"].encoder.in_features != n_train
        ):
            raise ValueError(
                f"the autoencoder reads "
                f"{self.module['autoencoder'].encoder.in_features} genes but "
                f"{n_train} training genes are stored."
            )
        n_all = n_train + len(self.targets)
        if self._ref.shape[1] != n_all or (
            self._graph is not None and self._graph.shape != (n_all, n_all)
        ):
            raise ValueError(
                f"the reference ({self._ref.shape}) or gene graph do not fit "
                f"{n_train} training + {len(self.targets)} target genes."
            )
        if len(self.reliability) != len(self.targets):
            raise ValueError(
                f"{len(self.reliability)} reliability scores for {len(self.targets)} target genes."
            )
        if self._ridge is not None and self._ridge.coef.shape[1] != len(self.targets):
            raise ValueError("the ridge coefficients do not fit the target genes.")
        if self._pca is not None and self._pca.components.shape[1] != n_train:
            raise ValueError("the PCA components do not fit the training genes.")
        if not 1 <= self.k <= self._ref.shape[0]:
            raise ValueError(
                f"the stored reference has {self._ref.shape[0]} cells, fewer "
                f"than k={self.k} neighbours."
            )

    def _require_fitted(self):
        if self.module is None or self._ref is None:
            raise ValueError("This StImputeModel has not been trained; call fit() first.")

    # ------------------------------------------------------------------ fit
    def prepare_inputs(
        self,
        adata_sp: ad.AnnData,
        adata_ref: ad.AnnData,
        *,
        genes=None,
        layer: str | None = None,
        ref_layer: str | None = None,
        gene_embeddings=None,
        min_train: int | None = None,
        matched: Matched | None = None,
        normalised_inputs: tuple | None = None,
    ) -> tuple[Inputs, Any]:
        """Validate both AnnData and build the training inputs (first half of :meth:`fit`).

        Also fills the size-dependent settings of :attr:`config` for ``adata_sp``
        (:meth:`StImputeConfig.resolved`). Train on the result with :meth:`fit_inputs`.

        Parameters
        ----------
        adata_sp, adata_ref, genes, layer, ref_layer, gene_embeddings
            As in :meth:`fit`.
        min_train
            Fewest training genes accepted (``None``: ``max(2, reliability_folds)``).
        matched
            The gene matching of the two AnnData when already computed
            (:func:`sctorch.stimpute._data.match_genes`; the cross-validation reuses it).
        normalised_inputs
            ``(normalised(adata_sp, layer), normalised(adata_ref, ref_layer))`` when
            already computed (:func:`sctorch.stimpute._data.normalised`).

        Returns
        -------
        ``(inputs, similarity)``: the :class:`~sctorch.stimpute._data.Inputs` record
        (training and target columns of the normalised matrices, names, scales) and the
        gene similarity of the GNN's graph (``None`` for ``method="transfer"``).

        Raises
        ------
        ValueError, KeyError, TypeError
            As :meth:`fit`.
        """
        check_anndata(adata_sp, "adata_sp")
        check_anndata(adata_ref, "adata_ref")
        self.config = cfg = self.config.resolved(adata_sp.n_obs, adata_sp.n_vars)
        check_neighbors(cfg.n_neighbors, adata_ref.n_obs, cfg.alpha)
        m = matched or match_genes(adata_sp, adata_ref, cfg.case_sensitive)
        min_train = max(2, cfg.reliability_folds) if min_train is None else min_train
        train, targets = select_genes(m, genes, min_train)
        if matched is None:
            warn_case(m)
        norm = normalised_inputs or (
            normalised(adata_sp, layer, "adata_sp"),
            normalised(adata_ref, ref_layer, "adata_ref"),
        )
        inputs = prepare(m, train, targets, *norm)
        sim = None
        if cfg.method == "gnn":
            sim, n_emb = similarity_for(
                inputs.train_ref + inputs.targets, gene_embeddings, inputs.ref, cfg.case_sensitive
            )
            inputs.info["n_with_embedding"] = n_emb
        elif gene_embeddings is not None:
            embedding_table(gene_embeddings)  # validated, unused: the transfer has no graph
            inputs.info["n_with_embedding"] = 0
        return inputs, sim

    def fit(
        self,
        adata_sp: ad.AnnData,
        adata_ref: ad.AnnData,
        *,
        genes=None,
        layer: str | None = None,
        ref_layer: str | None = None,
        gene_embeddings=None,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        **kwargs,
    ) -> StImputeModel:
        """Train on the genes ``adata_sp`` shares with ``adata_ref``; predictable: ``genes``.

        Zeng et al. 2024, §Methods: the method is chosen by :attr:`config`
        (``method="transfer"``: the k-NN + ridge transfer; ``"gnn"``: eqs. 1–12, with
        ``design="paper"`` the authors' code). :func:`sctorch.tl.stimpute` is this method
        plus writing the predictions into ``adata_sp``.

        Parameters
        ----------
        adata_sp
            Spatial cells × measured genes: **raw counts** (normalised here: total / median
            total, log1p, as the paper) or **log1p-normalised** values (used as given;
            detected). In memory or opened with ``backed="r"`` (read by blocks of cells).
        adata_ref
            Reference (scRNA-seq) cells × genes, same scales (detected); may be backed.
        genes
            Reference genes to make predictable (``None``: every reference gene not
            measured in ``adata_sp``). Listed genes that ``adata_sp`` measures are held out
            of training (for validation).
        layer
            Layer of ``adata_sp`` holding its input (``None``: ``.X``).
        ref_layer
            Layer of ``adata_ref`` holding its input (``None``: ``.X``).
        gene_embeddings
            Protein embeddings for the GNN's gene graph: genes × dimensions DataFrame (e.g.
            :func:`sctorch.pp.esm_gene_embeddings`) or mapping gene → 1-D vector; genes
            without one use reference-expression similarity (eq. 5). Validated but unused
            by ``method="transfer"``.
        device
            Torch device, e.g. ``"cpu"`` or ``"cuda:0"`` (``None``: CUDA, then MPS, else CPU).
        rng
            Seed (int) or :class:`numpy.random.Generator`; the same seed on the same device
            gives the same model.
        progress
            Show a ``tqdm`` progress bar.
        **kwargs
            Only the former names ``layer_sp`` / ``layer_ref`` (with a ``FutureWarning``).

        Returns
        -------
        ``self``, trained: :attr:`targets`, :attr:`reliability` (per target), the chosen
        ``k`` and blend weight (``alpha``); apply it with :meth:`predict`.

        Raises
        ------
        KeyError
            If a layer is missing or ``genes`` names genes absent from the reference.
        ValueError
            If the inputs are non-finite or negative, ``var_names`` repeat, too few genes
            are shared, the reference has fewer than ``n_neighbors`` cells or the
            embeddings are inconsistent (see :func:`sctorch.tl.stimpute`).
        TypeError
            If an unknown keyword is given.
        ImportError
            If torch-geometric is missing (``method="gnn"``).
        """
        self.fit_predict(
            adata_sp,
            adata_ref,
            genes=genes,
            layer=layer,
            ref_layer=ref_layer,
            gene_embeddings=gene_embeddings,
            device=device,
            rng=rng,
            progress=progress,
            **kwargs,
        )
        return self

    def fit_predict(
        self,
        adata_sp: ad.AnnData,
        adata_ref: ad.AnnData,
        *,
        genes=None,
        layer: str | None = None,
        ref_layer: str | None = None,
        gene_embeddings=None,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        **kwargs,
    ) -> np.ndarray:
        """:meth:`fit`, returning the predictions of the targets for ``adata_sp``'s cells.

        Parameters are those of :meth:`fit`.

        Returns
        -------
        ``(adata_sp.n_obs, n_targets)`` float32, on the normalised (log1p) scale, columns
        in the order of :attr:`targets` (equal to ``predict(adata_sp)``).

        Raises
        ------
        KeyError, ValueError, TypeError, ImportError
            As :meth:`fit`.
        """
        legacy_layers(kwargs, "StImputeModel.fit")
        layer, ref_layer = kwargs.pop("layer", layer), kwargs.pop("ref_layer", ref_layer)
        _no_other_keywords(kwargs, (), "StImputeModel.fit")
        inputs, sim = self.prepare_inputs(
            adata_sp,
            adata_ref,
            genes=genes,
            layer=layer,
            ref_layer=ref_layer,
            gene_embeddings=gene_embeddings,
        )
        return self.fit_inputs(
            inputs, sim, seed=seed_int(rng), device=resolve_device(device), progress=progress
        )

    def fit_inputs(self, inputs: Inputs, sim, *, seed: int, device, progress: bool) -> np.ndarray:
        """Train on :meth:`prepare_inputs`' result (second half of :meth:`fit`).

        Parameters
        ----------
        inputs, sim
            What :meth:`prepare_inputs` returned.
        seed
            Integer seed (:func:`sctorch._utils.seed_int` of ``rng``).
        device
            A resolved :class:`torch.device`.
        progress
            Show a ``tqdm`` progress bar.

        Returns
        -------
        The predictions of the targets ``(n_sp, n_targets)`` float32 (as :meth:`fit_predict`).
        """
        if self.config.method == "transfer":
            return self._fit_transfer(inputs, seed=seed, device=device, progress=progress)
        return self._fit_gnn(inputs, sim, seed=seed, device=device, progress=progress)

    def _finish(self, inputs: Inputs, module, hist, rel, seed: int) -> None:
        self.module = module.eval()
        self.genes, self.targets = list(inputs.train), list(inputs.targets)
        self.history, self.reliability = hist, np.asarray(rel, np.float32)
        self.info = {**inputs.info, "seed": seed, "train_genes_reference": inputs.train_ref}
        self._ref = inputs.ref

    def _fit_transfer(self, inputs: Inputs, *, seed: int, device, progress: bool) -> np.ndarray:
        """k-NN + ridge transfer (:mod:`._transfer`): select ``k``/weight, fit, score."""
        import torch

        cfg = self.config
        n_train = len(inputs.train)
        sp, ref = inputs.sp, inputs.ref
        hist: dict[str, list[float]] = {}
        parts: dict[str, Any] = {}
        ks = X.K_GRID if cfg.n_neighbors is None else (cfg.n_neighbors,)
        ws = X.W_GRID if cfg.ridge_weight is None else (float(cfg.ridge_weight),)
        n_ae = (cfg.reliability_folds + 1) * cfg.ae_epochs if cfg.latent == "autoencoder" else 0
        with (
            progress_bar(total=n_ae, desc="stImpute", progress=progress and n_ae > 0) as bar,
            seeded(seed),
        ):

            def make_space(cols, rows):
                if cfg.latent == "pca":
                    pca = X.PcaSpace.fit(columns(ref, cols), cfg.n_pcs, seed)
                    return (
                        pca.embed_ref(columns(ref, cols)),
                        pca.embed_section(columns(sp, cols)[rows]),
                        pca,
                    )
                data = CellData(
                    columns(sp, cols),
                    columns(ref, cols),
                    len(cols),
                    None,
                    n_neighbors=1,
                    batch_size=cfg.batch_size,
                    max_cells_per_epoch=cfg.max_cells_per_epoch,
                    device=device,
                    seed=seed,
                )
                ae, _ = T.train_autoencoder(data, cfg, hist, bar)
                emb_sp = T.embed(data, ae, reference=False)
                return T.embed(data, ae, reference=True), emb_sp[rows], ae

            sel = None
            if cfg.reliability_folds:
                sel = X.select(
                    sp,
                    ref,
                    n_train,
                    lambda c, r: make_space(c, r)[:2],
                    ks=ks,
                    ws=ws,
                    n_folds=cfg.reliability_folds,
                    seed=seed,
                )
                k, w = sel.k, sel.w
            else:
                k = min(cfg.n_neighbors or 50, ref.shape[0])
                w = 0.5 if cfg.ridge_weight is None else float(cfg.ridge_weight)
            emb_ref, emb_sp, space = make_space(np.arange(n_train), np.arange(sp.shape[0]))
            self._pca = space if cfg.latent == "pca" else None
            if cfg.latent == "autoencoder":
                parts["autoencoder"] = space
            Y = columns(ref, np.arange(n_train, ref.shape[1]))
            self._ridge = X.Ridge.fit(emb_ref, Y)
            pred = X.transfer(emb_sp, emb_ref, Y, self._ridge, k, w)
            rel = (
                np.full(Y.shape[1], np.nan, np.float32)
                if sel is None
                else X.reliability_score(
                    X.self_prediction(emb_ref, Y, k, _self_cells(ref.shape[0], seed)), sel.calib
                )
            )
        self.k, self.alpha = int(k), float(w)
        self._finish(inputs, torch.nn.ModuleDict(parts), hist, rel, seed)
        if sel is not None:
            self.info["selection"] = {f"k={a},w={b}": v for (a, b), v in sel.scores.items()}
            self.info["calibration"] = list(sel.calib)
        self.info.update(k=int(k), ridge_weight=float(w))
        return pred

    def _fit_gnn(self, inputs: Inputs, sim, *, seed: int, device, progress: bool) -> np.ndarray:
        """Train (eqs. 1–11); reliability; return the blended targets (eq. 12).

        Each step is one :func:`sctorch.models.fit` call (:mod:`._train`), all inside
        ``seeded(seed)``; one progress bar advances over every epoch of every step.
        """
        import torch

        cfg = self.config
        paper = cfg.design == "paper"
        n_train, n_all = len(inputs.train), inputs.ref.shape[1]
        if cfg.alpha is None or cfg.hidden_dim is None:
            raise ValueError(
                "the GNN's alpha / hidden_dim are not resolved; build the inputs with "
                "prepare_inputs() (or train with fit())."
            )
        alpha = float(cfg.alpha)
        k = min(cfg.n_neighbors or 50, inputs.ref.shape[0])
        graph_fn = (
            (lambda cols: distance_graph(sim, cols))
            if paper
            else (lambda cols: sim.knn_graph(cols, cfg.graph_neighbors))
        )
        data = CellData(
            inputs.sp,
            inputs.ref,
            n_train,
            graph_fn,
            n_neighbors=k,
            batch_size=cfg.batch_size,
            max_cells_per_epoch=cfg.max_cells_per_epoch,
            device=device,
            seed=seed,
            weighted=paper,
        )
        hist: dict[str, list[float]] = {}
        n_rel = 0 if paper else cfg.reliability_folds
        total = (
            cfg.ae_epochs
            + (2 * cfg.n_rounds - 1) * cfg.epochs
            + n_rel * cfg.epochs
            + (cfg.reliability_epochs if paper and cfg.reliability_folds else 0)
        )
        logger.info(
            "stImpute: %d spatial cells, %d training genes, %d genes to predict",
            data.n_sp,
            n_train,
            n_all - n_train,
        )
        with progress_bar(total=total, desc="stImpute", progress=progress) as bar, seeded(seed):
            ae, ae_opt = T.train_autoencoder(data, cfg, hist, bar)
            gnn, opt = T.new_gnn(cfg, k, device)
            for r in range(cfg.n_rounds):  # eq. 11: neighbours -> GNN (E) -> AE (M)
                nbr = T.cell_neighbours(data, ae)
                if alpha > 0:
                    T.train_gnn(data, gnn, opt, np.arange(n_train), nbr, cfg, hist, bar)
                    if r < cfg.n_rounds - 1:
                        T.refit_autoencoder(data, ae, ae_opt, gnn, nbr, cfg, hist, bar)
            scale = T.network_max(data, gnn, nbr) if paper else None
            pred = T.blend(
                data, gnn, nbr, np.arange(n_all), np.arange(n_train, n_all), alpha, scale
            )
            if not cfg.reliability_folds:
                rel = np.full(pred.shape[1], np.nan, np.float32)
            elif paper:
                rel = T.reliability_in_sample(data, gnn, nbr, cfg, seed, hist, bar)
            else:
                emb_ref = T.embed(data, ae, reference=True)
                cells = _self_cells(data.n_ref, seed)
                rel = T.reliability_heldout(data, nbr, cfg, alpha, seed, hist, bar, emb_ref, cells)
        self.k, self.alpha = k, alpha
        self._paper_scale = np.nan if scale is None else float(scale)
        self._finish(inputs, torch.nn.ModuleDict({"autoencoder": ae, "gnn": gnn}), hist, rel, seed)
        self._graph = data.graph(np.arange(n_all))
        return pred

    # ------------------------------------------------------------------ predict
    def _target_positions(self, genes) -> np.ndarray:
        if genes is None:
            return np.arange(len(self.targets))
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        cs = self.config.case_sensitive
        pos = {fold(g, cs): i for i, g in enumerate(self.targets)}
        unknown = [g for g in genes if fold(g, cs) not in pos]
        if unknown:
            raise KeyError(
                f"{len(unknown)} of the {len(genes)} requested gene(s) are not among "
                f"the model's {len(self.targets)} predictable genes, e.g. "
                f"{unknown[:5]}. Fit the model with genes=[...] naming them (genes "
                "measured in the fit section are training genes, not predicted)."
            )
        return np.array([pos[fold(g, cs)] for g in genes], dtype=np.int64)

    def _gene_positions(self, var_names) -> np.ndarray:
        """Position of each training gene in ``var_names`` (folded as at fit); ``-1`` missing."""
        cs = self.config.case_sensitive
        folded = pd.Index([fold(str(g), cs) for g in var_names])
        if not folded.is_unique:
            raise ValueError("adata_sp.var_names repeat after case folding; make them unique.")
        pos = folded.get_indexer([fold(g, cs) for g in self.genes])
        n = int((pos >= 0).sum())
        how = "exactly" if cs else "ignoring case"
        if n < 2:
            raise ValueError(
                f"adata_sp measures {n} of the model's {len(self.genes)} training "
                f"genes (matched {how}); at least 2 are needed to embed its cells."
            )
        if n < len(pos):
            import warnings

            warnings.warn(
                f"{len(pos) - n} of the model's {len(pos)} training genes are missing "
                "from adata_sp; they are treated as not detected (zero), which makes "
                "the cells' neighbours less reliable.",
                UserWarning,
                stacklevel=3,
            )
        return pos

    def predict(
        self, adata_sp: ad.AnnData, genes=None, *, layer: str | None = None
    ) -> pd.DataFrame:
        """Predict reference genes for the cells of a spatial section.

        Parameters
        ----------
        adata_sp
            Spatial cells × genes: the fit section or a new one, in memory or opened with
            ``anndata.read_h5ad(path, backed="r")`` (then read in blocks of cells; only the
            training genes are kept in memory). Needs the model's training genes (missing
            ones are zero-filled with a warning). Raw counts (normalised here: total /
            median total, log1p) or log1p-normalised values (used as given).
        genes
            Predictable genes to return (default: all, :attr:`targets`); the values of a
            gene do not depend on which others are requested.
        layer
            Layer of ``adata_sp`` holding the input; ``None`` uses ``.X``.

        Returns
        -------
        DataFrame, ``adata_sp.obs_names`` × genes (reference spelling), float32, on the
        normalised (log1p) scale. On the fit section it equals the fit's output. The
        genes' reliability scores (estimated at fit) are :attr:`reliability`, aligned
        with :attr:`targets`.

        Raises
        ------
        ValueError
            If the model is not trained, the input is non-finite or negative, or fewer than
            2 training genes are present.
        KeyError
            If a gene is not predictable by this model or ``layer`` is missing.
        """
        self._require_fitted()
        check_anndata(adata_sp, "adata_sp")
        out = self._target_positions(genes)
        sp = section_columns(adata_sp, layer, self._gene_positions(adata_sp.var_names), "adata_sp")
        cfg, n_train = self.config, len(self.genes)
        n_all = n_train + len(self.targets)
        if cfg.method == "transfer":
            train = np.arange(n_train)
            if self._pca is not None:
                ref_train = columns(self._ref, train)
                emb_ref, emb_sp = self._pca.embed_ref(ref_train), self._pca.embed_section(sp)
            else:
                data = CellData(
                    sp,
                    self._ref,
                    n_train,
                    None,
                    n_neighbors=self.k,
                    batch_size=cfg.batch_size,
                    max_cells_per_epoch=None,
                    device=self.device,
                )
                ae = self.module["autoencoder"]
                emb_ref, emb_sp = (
                    T.embed(data, ae, reference=True),
                    T.embed(data, ae, reference=False),
                )
            w = self.alpha
            ridge = None
            if w > 0:
                ridge = dataclasses.replace(
                    self._ridge, coef=self._ridge.coef[:, out], intercept=self._ridge.intercept[out]
                )
            pred = X.transfer(emb_sp, emb_ref, columns(self._ref, n_train + out), ridge, self.k, w)
        else:
            data = CellData(
                sp,
                self._ref,
                n_train,
                self._stored_graph,
                n_neighbors=self.k,
                batch_size=cfg.batch_size,
                max_cells_per_epoch=None,
                device=self.device,
                weighted=cfg.design == "paper",
            )
            nbr = T.cell_neighbours(data, self.module["autoencoder"])
            scale = None if np.isnan(self._paper_scale) else self._paper_scale
            pred = T.blend(
                data, self.module["gnn"], nbr, np.arange(n_all), n_train + out, self.alpha, scale
            )
        return pd.DataFrame(
            pred, index=adata_sp.obs_names.copy(), columns=pd.Index([self.targets[i] for i in out])
        )

    def _stored_graph(self, cols: np.ndarray):
        if not np.array_equal(cols, np.arange(self._graph.shape[0])):
            raise ValueError("a fitted StImputeModel stores the graph of all its genes only.")
        return self._graph

    # ------------------------------------------------------------------ cross-validation
    @classmethod
    def cross_validate(
        cls,
        adata_sp: ad.AnnData,
        adata_ref: ad.AnnData,
        *,
        n_folds: int = 5,
        layer: str | None = None,
        ref_layer: str | None = None,
        gene_embeddings=None,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        config: StImputeConfig | None = None,
        return_info: bool = False,
        **hyper,
    ) -> tuple[pd.DataFrame, np.ndarray] | tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
        """The paper's k-fold CV over the shared genes; see :func:`sctorch.tl.stimpute_cv`.

        Zeng et al. 2024, §Results "5-fold cross-validation": every fold trains a fresh
        model on the other folds' genes and predicts the fold's genes.

        Parameters
        ----------
        adata_sp, adata_ref, layer, ref_layer, gene_embeddings, device, rng, progress
            As in :meth:`fit` (every fold uses the same seed).
        n_folds
            Number of gene folds (at least 2).
        config
            The :class:`StImputeConfig` of every fold (``None``: the default preset).
        return_info
            Also return the run's record (chosen ``k`` and ``weight`` per fold, ``seed``,
            ``device``, the detected input scales).
        **hyper
            Settings of :class:`StImputeConfig` overriding ``config``; the former names
            ``layer_sp`` / ``layer_ref`` are accepted with a ``FutureWarning``.

        Returns
        -------
        ``(scores, predictions)``: the per-gene table of :func:`sctorch.tl.stimpute_cv` and
        the ``(n_obs, n_vars)`` float32 held-out predictions (NaN for genes not shared);
        ``(scores, predictions, info)`` with ``return_info=True``.

        Raises
        ------
        ValueError, KeyError, TypeError
            As :func:`sctorch.tl.stimpute_cv`.
        """
        from ._cv import cross_validate

        legacy_layers(hyper, "StImputeModel.cross_validate")
        layer, ref_layer = hyper.pop("layer", layer), hyper.pop("ref_layer", ref_layer)
        scores, preds, info = cross_validate(
            cls,
            adata_sp,
            adata_ref,
            n_folds=n_folds,
            layer=layer,
            ref_layer=ref_layer,
            gene_embeddings=gene_embeddings,
            device=device,
            rng=rng,
            progress=progress,
            config=config,
            **hyper,
        )
        return (scores, preds, info) if return_info else (scores, preds)
