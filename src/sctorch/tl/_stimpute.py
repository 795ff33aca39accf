"""stImpute: unmeasured spatial genes from a scRNA-seq reference over a gene graph.

Zeng et al., "Imputing spatial transcriptomics through gene network constructed from
protein language model", Commun Biol 7:1271 (2024), §Methods eqs. 1–13 and
§Implementation details; authors' code: github.com/cquzys/stImpute.

Thin public wrappers (validate -> :class:`~sctorch.stimpute._model.StImputeModel` -> write
keys); the method lives in :mod:`sctorch.stimpute`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys
from .._config import renamed, resolve_config, warn_unused
from .._docs import fill
from .._utils import (
    RandomState,
    accepts_random_state,
    check_copy,
    make_params,
    resolve_device,
    seed_int,
)
from ..stimpute._config import StImputeConfig

if TYPE_CHECKING:
    from ..stimpute._model import StImputeModel

__all__ = ["StImputeConfig", "stimpute", "stimpute_cv", "stimpute_gene_graph"]


def _warn_overwrite(places: list[str]) -> None:
    """Scanpy overwrites existing keys; so do we, but not silently."""
    if places:
        warnings.warn(
            f"Overwriting the existing {' and '.join(places)}; pass another "
            "key_added= to keep them.",
            UserWarning,
            stacklevel=3,
        )


def stimpute_gene_graph(
    genes: Sequence[str],
    *,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    expression=None,
    n_neighbors: int = 10,
    case_sensitive: bool = True,
) -> sparse.csr_matrix:
    """The stImpute gene graph: sparse, symmetric top-k cosine similarity (eqs. 4–6).

    Two genes are compared by the cosine similarity of their protein-language-model
    embeddings (eq. 4) when both have one, otherwise by the cosine similarity of their
    expression across reference cells (eq. 5); the merged similarity (eq. 6) is reduced
    to each gene's ``n_neighbors`` most similar genes and symmetrised (an edge is kept
    when either gene lists the other). The paper's graph is dense; keeping the top-k
    makes it scale to tens of thousands of genes (similarities are computed in blocks of
    1,024 genes and never stored whole).

    Parameters
    ----------
    genes
        The ``n_genes`` node names, unique.
    gene_embeddings
        Genes × dimensions DataFrame (e.g. :func:`sctorch.pp.esm_gene_embeddings` or
        :func:`sctorch.datasets.esm2_gene_embeddings`) or a mapping gene → 1-D vector.
    expression
        ``(n_cells, n_genes)`` reference expression (dense or sparse, log-normalised),
        columns in the order of ``genes``; needed when a gene lacks an embedding.
    n_neighbors
        ``k`` neighbours per gene before symmetrisation (capped at ``n_genes − 1``).
    case_sensitive
        Match ``genes`` to the embeddings' names exactly (``True``) or ignoring case.

    Returns
    -------
    ``scipy.sparse.csr_matrix`` of shape ``(n_genes, n_genes)``, float32, symmetric, zero
    diagonal; stored values are the similarities of the connected pairs. Every gene has
    at least ``min(n_neighbors, n_genes − 1)`` neighbours.

    Raises
    ------
    ValueError
        If ``genes`` has duplicates, ``n_neighbors < 1``, embeddings differ in dimension
        or hold non-finite values, ``expression`` holds non-finite values (a NaN would
        turn every similarity of its gene into NaN), or genes without embeddings have no
        ``expression`` (or it has the wrong number of columns).
    """
    from ..stimpute._graph import gene_graph

    return gene_graph(
        genes,
        gene_embeddings=gene_embeddings,
        expression=expression,
        n_neighbors=n_neighbors,
        case_sensitive=case_sensitive,
    )


#: keywords of stimpute / stimpute_cv that are not settings of StImputeConfig
_DATA_KEYWORDS = ("gene_embeddings", "return_adata")

# The parameters stimpute and stimpute_cv share, written once (filled in by _doc).
_FRAGMENTS = {
    "stimpute_data": """\
adata_sp
    Spatial cells × measured genes. **Raw counts** (integers: normalised here by
    dividing by the cell total, scaling by the median total and log1p, as the paper
    does) or **already normalised, log1p** values (any non-integer input is used as
    given). May be opened with ``anndata.read_h5ad(path, backed="r")``: it is then
    read in blocks of cells and only its shared genes are held in memory.
adata_ref
    Reference (scRNA-seq) cells × genes, raw counts or normalised (detected the same
    way). May be backed: its training and target genes are then read by blocks of
    cells.""",
    "stimpute_layers": """\
layer
    Layer of ``adata_sp`` holding its input (``None``: ``.X``). Formerly ``layer_sp``
    (still accepted, with a ``FutureWarning``).
ref_layer
    Layer of ``adata_ref`` holding its input (``None``: ``.X``). Formerly ``layer_ref``
    (still accepted, with a ``FutureWarning``).""",
    "stimpute_preset": """\
preset
    ``"default"`` (the k-NN + ridge transfer, see above) or ``"paper"`` (the authors'
    code, see above): the named instances ``StImputeConfig.PRESETS``; ``config`` and
    ``**kwargs`` change them.
config
    A :class:`~sctorch.stimpute.StImputeConfig` (replaces the preset) or a dict of some
    of its settings (applied to the preset).""",
    "stimpute_kwargs": """\
**kwargs
    Settings of :class:`~sctorch.stimpute.StImputeConfig` (each documented there), which
    override ``preset`` and ``config``; an unknown name raises ``TypeError`` naming the
    closest. Those that matter most: ``method`` (``"transfer"`` or ``"gnn"``),
    ``latent`` (``"pca"`` or ``"autoencoder"``), ``n_neighbors`` and ``ridge_weight``
    (``None``: chosen by the inner gene CV), ``n_pcs``, ``reliability_folds`` (``0``:
    no inner CV, reliability NaN), ``alpha`` (GNN weight; ``None``: by the data size),
    ``epochs``, ``ae_epochs``, ``n_rounds``, ``graph_neighbors``, ``hidden_dim``,
    ``lr``, ``weight_decay``, ``batch_size``, ``max_cells_per_epoch`` and
    ``case_sensitive``. A setting given here (or in a ``config`` dict) that the chosen
    method does not use (e.g. ``epochs`` with the PCA transfer) gives a
    :class:`UserWarning`. Keywords that are not settings:

    - ``gene_embeddings``: protein embeddings for the GNN's gene graph, a genes ×
      dimensions DataFrame (e.g. :func:`sctorch.pp.esm_gene_embeddings`,
      :func:`sctorch.datasets.esm2_gene_embeddings`) or a mapping gene → vector; genes
      without one use reference-expression similarity (eq. 5). Validated but unused
      by ``method="transfer"`` (with a :class:`UserWarning`).""",
}


def _doc(func):
    """Fill the shared placeholders of the stImpute functions' docstrings."""
    func.__doc__ = fill(func.__doc__, _FRAGMENTS)
    return func


def _layers(kwargs: dict[str, Any], layer, ref_layer, where: str):
    """``layer`` / ``ref_layer`` after the former names in ``kwargs`` (already renamed)."""
    for new, value in (("layer", layer), ("ref_layer", ref_layer)):
        if new in kwargs and value is not None:
            raise TypeError(f"{where}() got both {new}= and its former name; pass {new}=.")
    return kwargs.pop("layer", layer), kwargs.pop("ref_layer", ref_layer)


def _given(config, kwargs: Mapping[str, Any]) -> set[str]:
    """The settings named explicitly (keywords and the keys of a ``config`` dict)."""
    return set(kwargs) | (set(config) if isinstance(config, Mapping) else set())


def _record(cfg: StImputeConfig, **kw) -> dict[str, Any]:
    """``uns[...]['params']``: the call's arguments, then every setting, then the run."""
    first = {k: kw.pop(k) for k in list(kw) if k in ("genes", "n_folds", "layer", "ref_layer")}
    return make_params(**first, preset=kw.pop("preset"), **cfg.to_dict(), **kw)


@accepts_random_state
@_doc
def stimpute(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    ref_layer: str | None = None,
    key_added: str = _keys.STIMPUTE,
    preset: str = "default",
    config: StImputeConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
    return_model: bool = False,
    **kwargs: Any,
) -> ad.AnnData | StImputeModel | tuple[ad.AnnData, StImputeModel] | None:
    r"""Impute unmeasured genes of spatial cells from a scRNA-seq reference (stImpute).

    Zeng et al. 2024, Commun Biol 7:1271, §Methods. Both methods first place spatial and
    reference cells in one space built from the genes they share, then read the genes to
    predict from the reference cells that resemble each spatial cell.

    **Default, method="transfer"** (departs from the paper; see below):

    1. Latent space (``latent="pca"``): the shared genes are z-scored within each data
       set and projected on the reference's first ``n_pcs`` principal components (as
       SpaGE); ``latent="autoencoder"`` uses the paper's autoencoder (eqs. 1–3) instead.
    2. Prediction: ``w`` · ridge + (1 − ``w``) · k-NN mean, where the k-NN mean is the
       gene's mean over the cell's ``k`` cosine-nearest reference cells (eq. 12 with
       ``alpha = 0``) and the ridge regression maps latent coordinates to the gene,
       fitted on the reference cells.
    3. ``k`` (from 10, 20, 50, 100) and ``w`` (from 0, 0.25, 0.5, 0.75, 1) are chosen by a
       ``reliability_folds``-fold cross-validation over the **measured** genes (each fold
       hides some, rebuilds the space from the rest and scores every pair by the median
       held-out gene Pearson on up to 5,000 spatial cells); the genes being predicted
       are never used. Fixed values can be given (``n_neighbors``, ``ridge_weight``).
    4. Reliability: each predicted gene's *reference self-prediction* (Pearson between
       its leave-one-out k-NN mean among up to 5,000 reference cells and its reference
       values) scaled by the factor (≥ 0; least squares through the origin) that maps it
       best, in the same cross-validation, to the held-out Pearson of the measured genes.
       It estimates the gene's Pearson with the truth; higher is more trustworthy.

    **method="gnn"**: the paper's network. An autoencoder (eqs. 1–3; ``genes → 100 →
    genes``) embeds the cells; a GraphSAGE (eqs. 7–8, 2 layers of width 50) runs over a
    gene graph (eqs. 4–6, :func:`stimpute_gene_graph`: each gene's ``graph_neighbors``
    most similar genes by cosine *similarity* of ESM-2 embeddings where both genes have
    one, else of reference expression; ``graph_neighbors=0``: no graph) whose node
    features are a gene's expression in the cell's ``k`` neighbours; an MLP (eq. 9) gives
    one value per gene; loss (eq. 10) MSE + 2 × (cell + gene cosine loss). AE and GNN
    alternate for ``n_rounds`` (eq. 11); output ``alpha`` · GNN + (1 − ``alpha``) · k-NN
    mean (eq. 12; ``alpha=None``: 0.7 below 10,000 cells, else 0.5; ``n_neighbors=None``:
    50). Reliability as in the default, calibrated on GNNs retrained without each fold of
    measured genes.

    **preset="paper"** (``method="gnn"``, ``design="paper"``) reproduces the authors' code
    (github.com/cquzys/stImpute ``model.py``), which differs from the paper's text: the gene
    graph is the dense matrix of cosine **distances** (not similarities), with the identity
    subtracted and rows normalised, so each gene aggregates nearly all genes, tilted to
    dissimilar ones; the reliability MLP (eq. 13) learns the **in-sample** cosine of the
    training genes from their predicted profiles; the k-NN mean is rescaled per gene to
    the network's maximum before the 0.7/0.3 blend (0.5/0.5, ``k = 20`` above 10,000 cells
    or 500 genes); MLP width 256 (32), Adam lr 1e-2 and weight decay 1e-2. It is there
    for comparison; mini-batches replace the authors' full-batch steps.

    Why the default departs from the paper (measured in ``benchmarks/results/stimpute.md``
    on the Drosophila pair and on two same-platform proxies): the GNN's median gene
    Pearson was no better than its own k-NN mean (its gain was in cosine, see
    ``docs/which_method.md``) at tens of times the cost, and the GNN without a gene graph
    scored about the same as with one; the ridge + k-NN blend beat the k-NN mean in
    Pearson on every data set; the paper's reliability (eq. 13) did not rank genes by
    their held-out accuracy on the Drosophila pair, the calibrated self-prediction does
    (strongly on same-platform data, weakly across platforms). The gene graph and ESM-2
    embeddings matter only to ``method="gnn"``.

    Everything runs in blocks of cells: the k-NN mean of a block is one sparse product
    with the reference, never a ``(cells, genes, k)`` array of the whole section.

    Parameters
    ----------
    {stimpute_data}
    genes
        Reference genes to predict. ``None``: every reference gene not measured in
        ``adata_sp``. Genes listed here that ``adata_sp`` does measure are held out of
        training and predicted (for validation).
    {stimpute_layers}
    key_added
        Key of the outputs (``obsm`` and ``uns``).
    {stimpute_preset}
    {device}
    {rng}
    {random_state}
    {progress}
    copy
        Work on and return a copy of ``adata_sp`` instead of writing into it (refused for
        a backed ``adata_sp``).
    return_model
        Also return the trained :class:`sctorch.models.StImputeModel`, which can
        ``predict`` the same genes for new sections and be saved (``model.save(path)``).
    {stimpute_kwargs}
        - ``return_adata``: ``True`` returns a new AnnData of the predicted genes
          instead of writing into ``adata_sp`` (see Returns).

    Returns
    -------
    ``None`` by default, having written into ``adata_sp`` (with ``copy=True``: into a copy,
    which is returned)

    - ``obsm[key_added]``: DataFrame, spatial cells × predicted genes (float32);
    - ``uns[key_added]``: ``{'genes', 'reliability'`` (per gene, aligned with
      ``genes``; an estimate of its Pearson correlation with the truth for the default
      reliability, of its cosine for the paper preset; higher is more trustworthy),
      ``'params'}``.

    With ``return_adata=True``: a new AnnData, spatial cells × predicted genes (``X``
    float32, on the scale of the normalised input), with ``obs`` and every ``obsm`` entry
    (``obsm['spatial']`` and coordinates under any other key)
    copied, ``var['reliability']`` and ``uns[key_added]`` (``adata_sp`` is left as it
    was). With ``return_model=True``: the model; ``(copy, model)`` with ``copy=True`` and
    ``(new AnnData, model)`` with ``return_adata=True``.

    Existing ``obsm`` / ``uns`` entries named ``key_added`` are overwritten (as Scanpy
    does), with a :class:`UserWarning`. When gene names differ from the reference's only
    in case and ``case_sensitive=True``, a :class:`UserWarning` says how many genes match
    exactly and how many would match ignoring case.

    Raises
    ------
    KeyError
        If a layer is missing or ``genes`` names genes absent from the reference.
    ValueError
        If input values are non-finite or negative, ``var_names`` have duplicates, too
        few genes are shared (the count, the matching mode and, where case hides
        matches, how many would match ignoring case are reported), the
        reference has fewer than ``n_neighbors`` cells, embeddings are
        inconsistent, a setting is out of range (unknown ``method``, ``preset`` or
        ``latent`` included), ``preset="paper"`` is given with a config instance, or
        ``copy=True`` with a backed ``adata_sp``. The inputs are left unchanged.
    TypeError
        If a keyword is not a setting of :class:`~sctorch.stimpute.StImputeConfig`.
    ImportError
        If torch-geometric is not installed (``method="gnn"``).
    """
    from ..stimpute._model import StImputeModel

    renamed(kwargs, old="layer_sp", new="layer", where="stimpute")
    renamed(kwargs, old="layer_ref", new="ref_layer", where="stimpute")
    layer, ref_layer = _layers(kwargs, layer, ref_layer, "stimpute")
    gene_embeddings = kwargs.pop("gene_embeddings", None)
    return_adata = bool(kwargs.pop("return_adata", False))
    cfg = resolve_config(StImputeConfig, preset, config, kwargs)
    warn_unused(_given(config, kwargs), cfg.unused()[0], cfg.unused()[1])
    if gene_embeddings is not None and cfg.method == "transfer":
        warn_unused(
            {"gene_embeddings"}, {"gene_embeddings"}, "method='transfer' builds no gene graph"
        )
    check_copy(adata_sp, copy and not return_adata)
    model = StImputeModel(config=cfg)
    dev = resolve_device(device)
    seed = seed_int(rng)
    pred = model.fit_predict(
        adata_sp,
        adata_ref,
        genes=genes,
        layer=layer,
        ref_layer=ref_layer,
        gene_embeddings=gene_embeddings,
        device=dev,
        rng=seed,
        progress=progress,
    )
    targets, rel = model.targets, model.reliability
    params = _record(
        model.config,
        genes="None" if genes is None else list(targets),
        layer=layer,
        ref_layer=ref_layer,
        preset=preset,
        k=model.k,
        weight=model.alpha,
        gene_embeddings=gene_embeddings is not None,
        seed=seed,
        rng=rng,
        device=str(dev),
        train_genes=list(model.genes),
        **{
            k: v
            for k, v in model.info.items()
            if k not in ("seed", "train_genes_reference", "k", "ridge_weight")
        },
    )
    record = {"genes": np.asarray(targets, dtype=object), "reliability": rel, "params": params}
    if return_adata:
        out = ad.AnnData(
            pred,
            obs=adata_sp.obs.copy(),
            var=pd.DataFrame({"reliability": rel}, index=pd.Index(targets)),
        )
        for key in adata_sp.obsm.keys():  # coordinates under any key (spatial, spatial3d, ...)
            value = adata_sp.obsm[key]
            out.obsm[key] = value.copy() if hasattr(value, "copy") else np.array(value)
        out.uns[key_added] = record
        return (out, model) if return_model else out
    target = adata_sp.copy() if copy else adata_sp
    _warn_overwrite(
        [
            f"adata_sp.{where}[{key_added!r}]"
            for where, store in (("obsm", target.obsm), ("uns", target.uns))
            if key_added in store
        ]
    )
    target.obsm[key_added] = pd.DataFrame(
        pred, index=target.obs_names.copy(), columns=pd.Index(targets)
    )
    target.uns[key_added] = record
    if return_model:
        return (target, model) if copy else model
    return target if copy else None


@accepts_random_state
@_doc
def stimpute_cv(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    n_folds: int = 5,
    layer: str | None = None,
    ref_layer: str | None = None,
    key_added: str = _keys.STIMPUTE_CV,
    preset: str = "default",
    config: StImputeConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
    **kwargs: Any,
) -> pd.DataFrame | tuple[ad.AnnData, pd.DataFrame]:
    """The paper's evaluation: k-fold cross-validation over the shared genes.

    The genes shared by ``adata_sp`` and ``adata_ref`` are split into ``n_folds`` folds
    (shuffled, seeded); each fold is predicted by :func:`stimpute` trained on the other
    folds (Zeng et al. 2024, §Results "5-fold cross-validation"). The held-out
    predictions are compared with the measured values on the normalised scale. Inside
    each fold, the default method's own choices (``k``, ridge weight, reliability
    calibration) use only that fold's training genes. Every fold uses the same settings
    and seed, as :func:`stimpute` would.

    Parameters
    ----------
    {stimpute_data}
    n_folds
        Number of gene folds (5 in the paper); at least 2.
    {stimpute_layers}
    key_added
        Name of the layer (and ``uns`` entry) written to ``adata_sp``.
    {stimpute_preset}
    {device}
    {rng}
    {random_state}
    {progress}
    copy
        Work on and return a copy of ``adata_sp`` instead of writing into it (refused for
        a backed ``adata_sp``).
    {stimpute_kwargs}

    Returns
    -------
    DataFrame indexed by the shared genes (``adata_sp`` spelling) with columns
    ``pearson``, ``cosine``, ``mse`` (held-out prediction vs measured, per gene across
    cells, on the normalised scale), ``reliability`` (the fold model's score) and
    ``fold``; ``(copy, table)`` with ``copy=True``. Writes ``adata_sp.layers[key_added]``
    (``n_obs × n_vars`` float32; the held-out prediction of every shared gene, NaN for
    genes absent from the reference) and ``adata_sp.uns[key_added]`` = ``{'params'}``
    (into the copy with ``copy=True``; an existing layer of that name is overwritten,
    with a :class:`UserWarning`). The folds are trained by
    :meth:`sctorch.models.StImputeModel.cross_validate`.

    Raises
    ------
    ValueError, KeyError, TypeError
        As :func:`stimpute`; also if fewer than ``n_folds`` genes are shared,
        ``n_folds < 2``, or ``adata_sp`` has fewer than 2 cells (the per-gene scores are
        correlations across cells). ``adata_sp`` is left unchanged on error.
    """
    from ..stimpute._model import StImputeModel

    renamed(kwargs, old="layer_sp", new="layer", where="stimpute_cv")
    renamed(kwargs, old="layer_ref", new="ref_layer", where="stimpute_cv")
    layer, ref_layer = _layers(kwargs, layer, ref_layer, "stimpute_cv")
    gene_embeddings = kwargs.pop("gene_embeddings", None)
    if "return_adata" in kwargs:
        raise TypeError("stimpute_cv() got an unexpected keyword argument 'return_adata'.")
    cfg = resolve_config(StImputeConfig, preset, config, kwargs)
    warn_unused(_given(config, kwargs), cfg.unused()[0], cfg.unused()[1])
    if gene_embeddings is not None and cfg.method == "transfer":
        warn_unused(
            {"gene_embeddings"}, {"gene_embeddings"}, "method='transfer' builds no gene graph"
        )
    check_copy(adata_sp, copy)
    scores, held_out, info = StImputeModel.cross_validate(
        adata_sp,
        adata_ref,
        n_folds=n_folds,
        layer=layer,
        ref_layer=ref_layer,
        gene_embeddings=gene_embeddings,
        device=device,
        rng=rng,
        progress=progress,
        config=cfg,
        return_info=True,
    )
    target = adata_sp.copy() if copy else adata_sp
    _warn_overwrite([f"adata_sp.layers[{key_added!r}]"] if key_added in target.layers else [])
    target.layers[key_added] = held_out
    target.uns[key_added] = {
        "params": _record(
            cfg.resolved(adata_sp.n_obs, adata_sp.n_vars),
            n_folds=n_folds,
            layer=layer,
            ref_layer=ref_layer,
            preset=preset,
            k=info["k"],
            weight=info["weight"],
            gene_embeddings=gene_embeddings is not None,
            seed=info["seed"],
            rng=rng,
            device=str(info["device"]),
            spatial_scale=info["spatial_scale"],
            reference_scale=info["reference_scale"],
        )
    }
    return (target, scores) if copy else scores
