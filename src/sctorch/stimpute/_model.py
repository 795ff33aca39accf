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
from ._config import StImputeConfig, make_config, paper_config  # noqa: F401
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
        A :class:`StImputeConfig`; or give its fields as keywords (``**hyper``).
    genes
        The training genes (the latent space's inputs, spatial spelling, in model order).
    history
        Per-epoch losses of the training steps (``autoencoder_loss``, ``gnn_loss``,
        ``autoencoder_refit_loss``, ``reliability_gnn_loss``, ``reliability_loss``).

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
            config = dataclasses.replace(config or StImputeConfig(), **hyper)
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
    def _inputs(
        self,
        adata_sp,
        adata_ref,
        *,
        genes,
        layer_sp,
        layer_ref,
        gene_embeddings,
        min_train: int | None = None,
        matched: Matched | None = None,
        norm: tuple | None = None,
    ):
        """Validate both AnnData and build :class:`Inputs` + the gene similarity."""
        cfg = self.config
        check_anndata(adata_sp, "adata_sp")
        check_anndata(adata_ref, "adata_ref")
        check_neighbors(cfg.n_neighbors, adata_ref.n_obs, cfg.alpha)
        m = matched or match_genes(adata_sp, adata_ref, cfg.case_sensitive)
        min_train = max(2, cfg.reliability_folds) if min_train is None else min_train
        train, targets = select_genes(m, genes, min_train)
        if matched is None:
            warn_case(m)
        norm = norm or (
            normalised(adata_sp, layer_sp, "adata_sp"),
            normalised(adata_ref, layer_ref, "adata_ref"),
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
        layer_sp: str | None = None,
        layer_ref: str | None = None,
        gene_embeddings=None,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
    ) -> StImputeModel:
        """Train on the genes ``adata_sp`` shares with ``adata_ref``; predictable: ``genes``.

        Parameters are those of :func:`sctorch.tl.stimpute` (same input scales: raw counts
        or log1p-normalised, detected). ``genes=None`` makes every reference gene not
        measured in ``adata_sp`` predictable. Returns ``self``; raises what
        :func:`sctorch.tl.stimpute` raises.
        """
        inputs, sim = self._inputs(
            adata_sp,
            adata_ref,
            genes=genes,
            layer_sp=layer_sp,
            layer_ref=layer_ref,
            gene_embeddings=gene_embeddings,
        )
        self._fit(inputs, sim, seed=seed_int(rng), device=resolve_device(device), progress=progress)
        return self

    def _fit(self, inputs: Inputs, sim, *, seed: int, device, progress: bool) -> np.ndarray:
        """Train; return the predictions of the targets ``(n_sp, n_targets)``."""
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
        paper = cfg.preset == "paper"
        n_train, n_all = len(inputs.train), inputs.ref.shape[1]
        alpha = cfg.resolved_alpha(inputs.sp.shape[0])
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
                weighted=cfg.preset == "paper",
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
        layer_sp: str | None = None,
        layer_ref: str | None = None,
        gene_embeddings=None,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        config: StImputeConfig | None = None,
        **hyper,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """The paper's k-fold CV over the shared genes; see :func:`sctorch.tl.stimpute_cv`.

        Returns
        -------
        ``(scores, predictions)``: the per-gene table of :func:`sctorch.tl.stimpute_cv` and
        the ``(n_obs, n_vars)`` float32 held-out predictions (NaN for genes not shared).
        """
        scores, layer, _ = cls._cross_validate(
            adata_sp,
            adata_ref,
            n_folds=n_folds,
            layer_sp=layer_sp,
            layer_ref=layer_ref,
            gene_embeddings=gene_embeddings,
            device=device,
            rng=rng,
            progress=progress,
            config=config,
            **hyper,
        )
        return scores, layer

    @classmethod
    def _cross_validate(cls, adata_sp, adata_ref, **kw):
        from ._cv import cross_validate

        return cross_validate(cls, adata_sp, adata_ref, **kw)
