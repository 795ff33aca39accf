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
from ._data import (
    CellData,
    Inputs,
    Matched,
    check_anndata,
    check_neighbors,
    columns,
    columns_padded,
    fold,
    match_genes,
    normalised,
    prepare,
    select_genes,
    warn_case,
)
from ._graph import embedding_table, similarity_for

logger = logging.getLogger("sctorch")


@dataclasses.dataclass
class StImputeConfig:
    """Hyper-parameters of stImpute; see :func:`sctorch.tl.stimpute` for their meaning.

    ``alpha=None`` is resolved at fit (0.7 below 10,000 spatial cells, else 0.5). Fixed by
    the paper / authors' code: ``latent_dim`` (AE width 100), ``gnn_dim`` (50),
    ``gnn_layers`` (2), ``cosine_weight`` (2, eq. 10), ``reliability_epochs`` (200).

    Raises
    ------
    ValueError
        If a setting is out of range.
    """

    n_neighbors: int = 50
    alpha: float | None = None
    epochs: int = 10
    ae_epochs: int = 30
    n_rounds: int = 2
    batch_size: int = 512
    hidden_dim: int = 64
    graph_neighbors: int = 10
    reliability_folds: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_cells_per_epoch: int | None = 10_000
    case_sensitive: bool = True
    latent_dim: int = 100
    gnn_dim: int = 50
    gnn_layers: int = 2
    cosine_weight: float = 2.0
    reliability_epochs: int = 200

    def __post_init__(self):
        cap = self.max_cells_per_epoch
        if cap is not None and (not isinstance(cap, int | np.integer) or cap < 1):
            raise ValueError("max_cells_per_epoch must be a positive integer or None, got "
                             f"{cap!r}.")
        for name in ("epochs", "ae_epochs", "n_rounds", "batch_size", "hidden_dim",
                     "graph_neighbors", "latent_dim", "gnn_dim", "gnn_layers",
                     "reliability_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        rf = self.reliability_folds
        if not isinstance(rf, int | np.integer) or rf == 1 or rf < 0:
            raise ValueError(f"reliability_folds must be 0 (off) or >= 2, got {rf!r}.")
        if not isinstance(self.n_neighbors, int | np.integer) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {self.n_neighbors!r}.")
        if self.alpha is not None and not (0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha!r}.")

    def resolved_alpha(self, n_sp: int) -> float:
        """``alpha``, or its default for ``n_sp`` spatial cells."""
        if self.alpha is not None:
            return float(self.alpha)
        return 0.7 if n_sp < 10_000 else 0.5


class StImputeModel(BaseModel):
    r"""A fitted stImpute: predicts reference genes for spatial sections.

    ``fit`` trains the cell autoencoder and the gene GNN on the genes a spatial section
    shares with a scRNA-seq reference (eqs. 1–11) and scores the predictable genes
    (eq. 13); ``predict`` embeds the cells of that section **or of a new section** (same
    genes, raw counts or log1p-normalised) with the trained autoencoder, finds their
    ``n_neighbors`` reference cells in the stored reference embedding and blends the GNN
    with the neighbour mean (eq. 12) for any of the model's predictable genes.

    Parameters
    ----------
    module
        ``torch.nn.ModuleDict({"autoencoder": CellAutoEncoder, "gnn": GeneSAGE})``;
        ``None`` before :meth:`fit`.
    config
        A :class:`StImputeConfig`; or give its fields as keywords (``**hyper``).
    genes
        The training genes (the autoencoder's inputs, spatial spelling, in model order).
    history
        Per-epoch losses of the training steps (``autoencoder_loss``, ``gnn_loss``,
        ``autoencoder_refit_loss``, ``reliability_gnn_loss``, ``reliability_loss``).

    Notes
    -----
    Model state besides the weights, all in the saved file (:meth:`save`):
    ``targets`` (the predictable genes, reference spelling), ``reliability`` (eq. 13 score
    per target, from the fit section), the gene graph over training + target genes (CSR,
    8 bytes per edge) and the **normalised reference expression of the training and target
    genes** as CSR arrays (float32 values + int32 column indices: at most 8 bytes per
    reference cell × gene, less for sparse data; plus 8 bytes per reference cell). The
    reference dominates the file: 10,000 reference cells × 20,000 genes at 10 % non-zeros
    take about 160 MB. The weights are small (AE: 2 · 100 · n_train floats; GNN: ≈ 25k floats
    for ``n_neighbors=50``).
    """

    config_cls = StImputeConfig

    def __init__(self, module=None, *, config: StImputeConfig | None = None,
                 genes=(), history=None, **hyper):
        if hyper:
            config = dataclasses.replace(config or StImputeConfig(), **hyper)
        super().__init__(module, config=config, genes=genes, history=history)
        self.targets: list[str] = []
        self.reliability = np.zeros(0, np.float32)
        self.alpha = np.nan
        self.info: dict[str, Any] = {}
        self._ref = None  # (n_ref, n_train + n_targets) normalised reference
        self._graph = None  # (n_train + n_targets,)² CSR gene graph

    # ------------------------------------------------------------------ state
    @classmethod
    def _build_module(cls, config: StImputeConfig, extra: dict[str, Any]):
        import torch

        mods = T.torch_modules()
        with torch.random.fork_rng(devices=[]):  # building must not move the user's stream
            return torch.nn.ModuleDict({
                "autoencoder": mods.CellAutoEncoder(int(extra["n_train"]), config.latent_dim),
                "gnn": mods.GeneSAGE(config.n_neighbors, dim=config.gnn_dim,
                                     n_layers=config.gnn_layers, hidden_dim=config.hidden_dim)})

    def _extra_state(self):
        ref = sparse.csr_matrix(self._ref, dtype=np.float32)
        extra = {"n_train": len(self.genes), "targets": self.targets, "alpha": self.alpha,
                 "ref_shape": list(ref.shape), "info": self.info}
        arrays = {"ref_data": ref.data.astype(np.float32),
                  "ref_indices": ref.indices.astype(np.int32),
                  "ref_indptr": ref.indptr.astype(np.int64),
                  "graph_indices": self._graph.indices.astype(np.int64),
                  "graph_indptr": self._graph.indptr.astype(np.int64),
                  "reliability": np.asarray(self.reliability, np.float32)}
        return extra, arrays

    def _set_extra_state(self, extra, arrays):
        self.targets = [str(g) for g in extra["targets"]]
        self.alpha = float(extra["alpha"])
        self.info = dict(extra["info"])
        self.reliability = arrays["reliability"]
        n_ref, n_all = (int(v) for v in extra["ref_shape"])
        self._ref = sparse.csr_matrix((arrays["ref_data"], arrays["ref_indices"],
                                       arrays["ref_indptr"]), shape=(n_ref, n_all))
        g = arrays["graph_indptr"]
        self._graph = sparse.csr_matrix((np.ones(len(arrays["graph_indices"]), np.float32),
                                         arrays["graph_indices"], g), shape=(n_all, n_all))
        for m in (self._ref, self._graph):  # index bounds, lengths: raises ValueError
            m.check_format(full_check=True)

    def _check_integrity(self):
        n_in = self.module["autoencoder"].encoder.in_features
        if n_in != len(self.genes):
            raise ValueError(f"the autoencoder reads {n_in} genes but {len(self.genes)} "
                             "training genes are stored.")
        n_all = len(self.genes) + len(self.targets)
        if self._ref.shape[1] != n_all or self._graph.shape != (n_all, n_all):
            raise ValueError(f"the reference ({self._ref.shape}) and gene graph "
                             f"({self._graph.shape}) do not fit {len(self.genes)} training + "
                             f"{len(self.targets)} target genes.")
        if len(self.reliability) != len(self.targets):
            raise ValueError(f"{len(self.reliability)} reliability scores for "
                             f"{len(self.targets)} target genes.")
        if self._ref.shape[0] < self.config.n_neighbors:
            raise ValueError(f"the stored reference has {self._ref.shape[0]} cells, fewer "
                             f"than n_neighbors={self.config.n_neighbors}.")

    def _require_fitted(self):
        if self.module is None or self._ref is None:
            raise ValueError("This StImputeModel has not been trained; call fit() first.")

    # ------------------------------------------------------------------ fit
    def _inputs(self, adata_sp, adata_ref, *, genes, layer_sp, layer_ref, gene_embeddings,
                min_train: int | None = None, matched: Matched | None = None,
                norm: tuple | None = None):
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
        norm = norm or (normalised(adata_sp, layer_sp, "adata_sp"),
                        normalised(adata_ref, layer_ref, "adata_ref"))
        inputs = prepare(m, train, targets, *norm)
        sim, n_emb = similarity_for(inputs.train_ref + inputs.targets, gene_embeddings,
                                    inputs.ref, cfg.case_sensitive)
        inputs.info["n_with_embedding"] = n_emb
        return inputs, sim

    def fit(self, adata_sp: ad.AnnData, adata_ref: ad.AnnData, *, genes=None,
            layer_sp: str | None = None, layer_ref: str | None = None, gene_embeddings=None,
            device: str | None = None, rng: RandomState = 0, progress: bool = True
            ) -> StImputeModel:
        """Train on the genes ``adata_sp`` shares with ``adata_ref``; predictable: ``genes``.

        Parameters are those of :func:`sctorch.tl.stimpute` (same input scales: raw counts
        or log1p-normalised, detected). ``genes=None`` makes every reference gene not
        measured in ``adata_sp`` predictable. Returns ``self``; raises what
        :func:`sctorch.tl.stimpute` raises.
        """
        inputs, sim = self._inputs(adata_sp, adata_ref, genes=genes, layer_sp=layer_sp,
                                   layer_ref=layer_ref, gene_embeddings=gene_embeddings)
        T.torch_modules()
        self._fit(inputs, sim, seed=seed_int(rng), device=resolve_device(device),
                  progress=progress)
        return self

    def _fit(self, inputs: Inputs, sim, *, seed: int, device, progress: bool) -> np.ndarray:
        """Train (eqs. 1–11, 13); return the blended targets ``(n_sp, n_targets)`` (eq. 12).

        Each step is one :func:`sctorch.models.fit` call (:mod:`._train`), all inside
        ``seeded(seed)`` (where the former global seeding was, so results per seed are
        unchanged and the caller's generators are restored on exit); one progress bar
        advances over every epoch of every step.
        """
        cfg = self.config
        n_train, n_all = len(inputs.train), inputs.ref.shape[1]
        alpha = cfg.resolved_alpha(inputs.sp.shape[0])
        data = CellData(inputs.sp, inputs.ref, n_train,
                        lambda cols: sim.knn_graph(cols, cfg.graph_neighbors),
                        n_neighbors=cfg.n_neighbors, batch_size=cfg.batch_size,
                        max_cells_per_epoch=cfg.max_cells_per_epoch, device=device, seed=seed)
        hist: dict[str, list[float]] = {}
        total = (cfg.ae_epochs + (2 * cfg.n_rounds - 1) * cfg.epochs
                 + (cfg.reliability_folds * cfg.epochs + cfg.reliability_epochs
                    if cfg.reliability_folds else 0))
        logger.info("stImpute: %d spatial cells, %d training genes, %d genes to predict",
                    data.n_sp, n_train, n_all - n_train)
        with progress_bar(total=total, desc="stImpute", progress=progress) as bar, seeded(seed):
            ae, ae_opt = T.train_autoencoder(data, cfg, hist, bar)
            gnn, opt = T.new_gnn(cfg, device)
            for r in range(cfg.n_rounds):  # eq. 11: neighbours -> GNN (E) -> AE (M)
                nbr = T.cell_neighbours(data, ae)
                if alpha > 0:
                    T.train_gnn(data, gnn, opt, np.arange(n_train), nbr, cfg, hist, bar)
                    if r < cfg.n_rounds - 1:
                        T.refit_autoencoder(data, ae, ae_opt, gnn, nbr, cfg, hist, bar)
            pred = T.blend(data, gnn, nbr, np.arange(n_all), np.arange(n_train, n_all), alpha)
            if cfg.reliability_folds:
                rel, _ = T.reliability(data, nbr, pred, cfg, alpha, seed, hist, bar)
            else:
                rel = np.full(pred.shape[1], np.nan, np.float32)
        import torch

        self.module = torch.nn.ModuleDict({"autoencoder": ae, "gnn": gnn}).eval()
        self.genes, self.targets = list(inputs.train), list(inputs.targets)
        self.history, self.reliability, self.alpha = hist, rel, alpha
        self.info = {**inputs.info, "seed": seed, "train_genes_reference": inputs.train_ref}
        self._ref, self._graph = inputs.ref, data.graph(np.arange(n_all))
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
            raise KeyError(f"{len(unknown)} of the {len(genes)} requested gene(s) are not among "
                           f"the model's {len(self.targets)} predictable genes, e.g. "
                           f"{unknown[:5]}. Fit the model with genes=[...] naming them (genes "
                           "measured in the fit section are training genes, not predicted).")
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
            raise ValueError(f"adata_sp measures {n} of the model's {len(self.genes)} training "
                             f"genes (matched {how}); at least 2 are needed to embed its cells.")
        if n < len(pos):
            import warnings

            warnings.warn(f"{len(pos) - n} of the model's {len(pos)} training genes are missing "
                          "from adata_sp; they are treated as not detected (zero), which makes "
                          "the cells' neighbours less reliable.", UserWarning, stacklevel=3)
        return pos

    def predict(self, adata_sp: ad.AnnData, genes=None, *, layer: str | None = None
                ) -> pd.DataFrame:
        """Predict reference genes for the cells of a spatial section (eq. 12).

        Parameters
        ----------
        adata_sp
            Spatial cells × genes: the fit section or a new one. Needs the model's training
            genes (missing ones are zero-filled with a warning). Raw counts (normalised
            here: total / median total, log1p) or log1p-normalised values (used as given).
        genes
            Predictable genes to return (default: all, :attr:`targets`); the values of a
            gene do not depend on which others are requested.
        layer
            Layer of ``adata_sp`` holding the input; ``None`` uses ``.X``.

        Returns
        -------
        DataFrame, ``adata_sp.obs_names`` × genes (reference spelling), float32, on the
        normalised (log1p) scale. On the fit section it equals the fit's output. The
        genes' reliability scores (eq. 13, estimated on the fit section) are
        :attr:`reliability`, aligned with :attr:`targets`.

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
        X, _ = normalised(adata_sp, layer, "adata_sp")
        sp = columns_padded(X, self._gene_positions(adata_sp.var_names))
        cfg, n_train = self.config, len(self.genes)
        n_all = n_train + len(self.targets)
        data = CellData(sp, self._ref, n_train, self._stored_graph, n_neighbors=cfg.n_neighbors,
                        batch_size=cfg.batch_size, max_cells_per_epoch=None, device=self.device)
        nbr = T.cell_neighbours(data, self.module["autoencoder"])
        pred = T.blend(data, self.module["gnn"], nbr, np.arange(n_all), n_train + out,
                       self.alpha)
        return pd.DataFrame(pred, index=adata_sp.obs_names.copy(),
                            columns=pd.Index([self.targets[i] for i in out]))

    def _stored_graph(self, cols: np.ndarray):
        if not np.array_equal(cols, np.arange(self._graph.shape[0])):
            raise ValueError("a fitted StImputeModel stores the graph of all its genes only.")
        return self._graph

    # ------------------------------------------------------------------ cross-validation
    @classmethod
    def cross_validate(cls, adata_sp: ad.AnnData, adata_ref: ad.AnnData, *, n_folds: int = 5,
                       layer_sp: str | None = None, layer_ref: str | None = None,
                       gene_embeddings=None, device: str | None = None, rng: RandomState = 0,
                       progress: bool = True, config: StImputeConfig | None = None, **hyper
                       ) -> tuple[pd.DataFrame, np.ndarray]:
        """The paper's k-fold CV over the shared genes; see :func:`sctorch.tl.stimpute_cv`.

        Returns
        -------
        ``(scores, predictions)``: the per-gene table of :func:`sctorch.tl.stimpute_cv` and
        the ``(n_obs, n_vars)`` float32 held-out predictions (NaN for genes not shared).
        """
        scores, layer, _ = cls._cross_validate(
            adata_sp, adata_ref, n_folds=n_folds, layer_sp=layer_sp, layer_ref=layer_ref,
            gene_embeddings=gene_embeddings, device=device, rng=rng, progress=progress,
            config=config, **hyper)
        return scores, layer

    @classmethod
    def _cross_validate(cls, adata_sp, adata_ref, *, n_folds, layer_sp, layer_ref,
                        gene_embeddings, device, rng, progress, config=None, **hyper):
        from ..metrics import pairwise_scores

        proto, m, seed, folds = cls._cv_plan(adata_sp, adata_ref, n_folds, rng, config, hyper)
        cfg = proto.config
        norm = (normalised(adata_sp, layer_sp, "adata_sp"),
                normalised(adata_ref, layer_ref, "adata_ref"))
        if gene_embeddings is not None:
            embedding_table(gene_embeddings)  # refuse bad embeddings before any training
        held = [[m.shared[i] for i in te] for _, te in folds]
        for h in held:  # validate every fold before any training
            select_genes(m, [m.ref_name(g) for g in h], max(2, cfg.reliability_folds))
        T.torch_modules()
        dev = resolve_device(device)
        sp_pos = {g: i for i, g in enumerate(m.sp_names)}
        layer = np.full((adata_sp.n_obs, adata_sp.n_vars), np.nan, np.float32)
        rel_all = pd.Series(np.nan, index=pd.Index(m.shared), dtype=np.float64)
        fold_of = pd.Series(0, index=pd.Index(m.shared), dtype=np.int64)
        info: dict[str, Any] = {}
        for f, h in enumerate(progress_bar(held, desc="stImpute CV", progress=progress)):
            model = cls(config=cfg)
            inputs, sim = model._inputs(
                adata_sp, adata_ref, genes=[m.ref_name(g) for g in h], layer_sp=layer_sp,
                layer_ref=layer_ref, gene_embeddings=gene_embeddings, matched=m, norm=norm)
            layer[:, [sp_pos[g] for g in h]] = model._fit(inputs, sim, seed=seed, device=dev,
                                                           progress=False)
            rel_all[h], fold_of[h] = model.reliability, f
            info = info or {**inputs.info, "alpha": model.alpha, "seed": seed, "device": dev}
        cols = np.array([sp_pos[g] for g in m.shared])
        scores = pairwise_scores(columns(norm[0][0], cols), layer[:, cols], axis="gene")
        scores.index = pd.Index(m.shared)
        scores["reliability"] = rel_all
        scores["fold"] = fold_of
        return scores, layer, info

    @classmethod
    def _cv_plan(cls, adata_sp, adata_ref, n_folds, rng, config, hyper):
        """Validate the CV settings; the gene folds (shuffled, seeded), before any training."""
        from sklearn.model_selection import KFold

        if not isinstance(n_folds, int | np.integer) or n_folds < 2:
            raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
        check_anndata(adata_sp, "adata_sp")
        check_anndata(adata_ref, "adata_ref")
        if adata_sp.n_obs < 2:
            raise ValueError(f"adata_sp has {adata_sp.n_obs} cell; the cross-validation scores "
                             "genes by their correlation across spatial cells, which needs at "
                             "least 2 cells.")
        proto = cls(config=config, **hyper)
        m = match_genes(adata_sp, adata_ref, proto.config.case_sensitive)
        if len(m.shared) < n_folds:
            how = "exactly" if m.case_sensitive else "ignoring case"
            raise ValueError(f"Found {len(m.shared)} gene(s) shared by adata_sp and adata_ref "
                             f"(matched {how}); {n_folds}-fold cross-validation needs at least "
                             f"{n_folds}. " + m.case_hint)
        warn_case(m)
        seed = seed_int(rng)
        kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**31))
        return proto, m, seed, list(kf.split(np.arange(len(m.shared))))

