"""scRobust public functions: validate -> :class:`ScRobustModel` -> write AnnData keys.

Park & Lee, "scRobust: a robust self-supervised learning strategy to tackle the inherent
sparsity of single-cell RNA-seq data", Brief Bioinform 2024, 25(6):bbae586, §Methods
(eqs. 1–20). The method lives in :mod:`sctorch.scrobust`; these functions check
arguments, call the model and write keys. Measured: ``docs/which_method.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _keys
from .._utils import RandomState, check_copy, check_positive, make_params, resolve_device, seed_int
from ..scrobust._data import _build_vocab, _check_labels, _class_weights
from ..scrobust._model import ScRobustModel

if TYPE_CHECKING:
    import anndata as ad

__all__ = [
    "ScRobustModel",
    "scrobust_annotate",
    "scrobust_embed",
    "scrobust_marker_genes",
    "scrobust_pathway_scores",
    "scrobust_pretrain",
]

InputScale = Literal["counts", "log1p", "auto"]


# ============================================================================ pre-training
def scrobust_pretrain(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    vocab: str | Path | Sequence[str] | None = None,
    preset: Literal["default", "paper"] = "default",
    token_values: Literal["rank", "log1p"] | None = None,
    view_thinning: tuple[float, float] | Literal[False] | None = None,
    select: Literal["knn", "contrastive", "none"] | None = None,
    patience: int | None = None,
    n_genes_per_view: int | None = None,
    d_model: int | None = None,
    n_layers: int | None = None,
    n_heads: int = 8,
    dim_feedforward: int | None = None,
    dropout: float = 0.1,
    head_dropout: float = 0.3,
    temperature: float = 0.07,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    min_shared_genes: int = 10,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
) -> ScRobustModel:
    """Pre-train a scRobust encoder by cell augmentation (Park & Lee 2024, eqs. 1–11).

    Every cell is a set of tokens: its non-zero genes, each a trainable vector normalised
    to unit length and scaled by the gene's value in the cell (eqs. 1–2), plus a CLS token
    (scale 1) whose encoder output is the cell embedding; no positional embeddings. Each
    step draws, per cell, **two views** (``n_genes_per_view`` of its non-zero genes each,
    without replacement, independently) and a **third** subset whose values are
    predicted. The loss (eq. 11) is NT-Xent (eqs. 6–8, temperature ``temperature``) between
    the two views' projected CLS outputs plus the MSE of predicting the third subset's
    values from each view's CLS output through a second head dotted with the raw gene
    vectors (eqs. 9–10; the paper leaves open which view predicts: both do, averaged).
    The encoder is post-LayerNorm (so LayerNorm cannot erase the scale of eq. 2) and
    evaluates its last layer for the CLS query alone (same result, a fraction of the
    cost). Training: :meth:`ScRobustModel.fit` (through :func:`sctorch.models.fit`, inside
    :func:`sctorch._utils.seeded`: the caller's random streams are kept).

    ``preset="paper"``: the paper and the authors' code — values ``log1p(x / library ×
    10⁴)``, both views from the cell at its own depth, 10 % of the mean detected genes per
    view, the checkpoint with the lowest NT-Xent of 10 % held-out cells, ``d_model=512``, 8
    heads, 1 layer (2 for ≥ 20,000 cells), Adam ``lr=5e-5``, batch 64 (the authors' code:
    batch 256, 2 layers, 50 genes per view, up to 5,000 epochs on a GPU; ``epochs=10`` is
    a CPU size). Views that share the cell's depth let NT-Xent be solved by depth (every
    count-1 gene carries ``log1p(10⁴ / library)``), and 10 % of ~85 detected HVGs is 8
    genes: that embedding followed depth and clustered far worse than PCA. ``"default"``
    departs: **50 genes per view** (the authors' code) and each view **binomially
    thinned** at its own per-cell rate in ``view_thinning`` (two views of a cell differ in
    depth), last epoch kept, ``d_model=64``, ``lr=1e-3``, ~5,000 steps (``epochs``). Measured
    but not kept (they lost): within-cell rank values (``token_values="rank"``) and the
    k-NN agreement of two thinned copies as epoch selection (``select="knn"``); see
    ``benchmarks/results/scrobust_depth.md``. Arguments left ``None`` take the preset's
    value (``sctorch.scrobust._presets.PRESETS``).

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``), dense or sparse (sparse stays sparse), or backed
        (``anndata.read_h5ad(path, backed="r")``: one pass checks it, then the cells of each
        mini-batch are read from the file; the model equals the one trained from memory).
    layer
        Layer holding the data; ``None`` uses ``adata.X``.
    input_scale
        ``"counts"`` (raw integer counts, log-normalised to 10⁴ per cell then log1p, as
        the authors' code), ``"log1p"`` (log-normalised values; integer counts and values
        above 30 are refused) or ``"auto"`` (counts when every value is a non-negative
        integer); decided by :func:`sctorch._utils.resolve_input_scale`.
    vocab
        ``None`` builds the vocabulary from ``adata.var_names`` (ids 0–4 = PAD, SEP,
        UNKNOWN, CLS, MASK, then the genes); a path reads an ``ID,SYMBOL`` CSV such as
        scRobust's ``whole_human_vocab.csv`` (ids 0–3 = PAD, SEP, UNKWON, CLS); a
        sequence of gene names is used after the five special tokens. Genes of ``adata``
        missing from a given vocabulary are skipped (counted in a warning).
    preset
        ``"default"`` or ``"paper"`` (see above).
    token_values, view_thinning, select, patience
        ``"rank"`` or ``"log1p"`` token values; ``(low, high)`` per-cell thinning rates of
        the views or ``False``; epoch selection ``"knn"``, ``"contrastive"`` or ``"none"``
        (last epoch), and epochs without improvement before stopping
        (:meth:`ScRobustModel.fit`). Thinning and ``"knn"`` need counts input.
    n_genes_per_view
        Genes per view (``None``: the preset's; ``"paper"``: 10 % of the mean number of
        detected genes per cell, at least 8).
    d_model, n_layers, n_heads, dim_feedforward, dropout
        Encoder width (``None``: the preset's), layers (``None``: 1, or 2 when ``n_obs ≥
        20,000``), heads, feed-forward width (``None``: ``4 × d_model``) and dropout.
    head_dropout, temperature
        Dropout in the two-layer heads; NT-Xent temperature τ.
    epochs, batch_size, lr
        Passes over the cells (default preset: ``ceil(320,000 / n_obs)``, at most 200, i.e.
        ~5,000 steps of 64 cells; 10 epochs of 2,800 PBMCs clustered below PCA, 115 above:
        ``benchmarks/results/scrobust_steps.md``), cells per step, Adam learning rate.
    min_shared_genes
        Fewest genes that must be in the vocabulary.
    device, rng, progress
        Torch device (``None``: CUDA, then MPS, then CPU); seed or
        :class:`numpy.random.Generator` (same seed, same device: same model); progress bar.

    Returns
    -------
    :class:`ScRobustModel` (in evaluation mode), with ``history['pretrain_loss']``,
    ``['pretrain_contrastive']``, ``['pretrain_mse']`` (epoch means) and the selection
    score (``['pretrain_knn_agreement']`` or ``['pretrain_val_contrastive']``).

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    ValueError
        If the data do not hold the declared ``input_scale``,
        ``var_names`` are duplicated, a cell has no non-zero vocabulary gene, fewer than
        ``min_shared_genes`` genes are in the vocabulary, fewer than 2 cells are given, or
        a parameter is out of range (``batch_size`` ≥ 2).
    FileNotFoundError
        If a vocabulary file does not exist.
    """
    from ..scrobust._presets import pretrain_config

    config, fit_kw = pretrain_config(
        preset,
        _build_vocab(vocab, adata.var_names),
        n_obs=adata.n_obs,
        token_values=token_values,
        view_thinning=view_thinning,
        select=select,
        patience=patience,
        n_genes_per_view=n_genes_per_view,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        dim_feedforward=dim_feedforward,
        dropout=dropout,
        head_dropout=head_dropout,
        temperature=temperature,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        input_scale=input_scale,
    )
    return ScRobustModel(None, config=config, genes=None, vocab=fit_kw.pop("vocab")).fit(
        adata,
        layer=layer,
        input_scale=input_scale,
        min_shared_genes=min_shared_genes,
        device=device,
        rng=rng,
        progress=progress,
        **fit_kw,
    )


# ============================================================================ embedding
def scrobust_embed(
    adata: ad.AnnData,
    model: ScRobustModel | None = None,
    *,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    n_genes: int = 400,
    gene_order: Literal["unique", "random"] = "unique",
    batch_size: int = 64,
    min_shared_genes: int = 10,
    key_added: str = _keys.SCROBUST_EMBED,
    pretrain_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
) -> ad.AnnData | None:
    """Cell embeddings from the CLS output of a scRobust encoder.

    Each cell is encoded from up to ``n_genes`` of its non-zero genes; the CLS output
    (``d_model`` values) is its embedding. By default the genes are the cell's "highly
    unique genes" — those detected in the fewest cells of ``adata`` first (eq. 12, as the
    authors' ``get_cell_embeddings``); ``gene_order="random"`` draws a random subset.

    :meth:`ScRobustModel.embed` plus writing the keys; backed AnnData are read by blocks.
    Measured against PCA: ``benchmarks/results/scrobust_depth.md``.

    Parameters
    ----------
    adata
        Cells × genes, raw counts (or log1p-normalised with ``input_scale="log1p"``;
        raw counts declared as log1p are refused).
    model
        A model from :func:`scrobust_pretrain` or :meth:`ScRobustModel.load`; ``None``
        pre-trains one on ``adata`` first (with ``pretrain_kwargs``).
    layer, input_scale
        Input matrix and its scale, as in :func:`scrobust_pretrain`.
    n_genes
        Genes per cell (400 as the authors' code).
    gene_order
        ``"unique"`` (rarest-detected genes first) or ``"random"``.
    batch_size
        Cells per forward pass.
    min_shared_genes
        Fewest genes of ``adata`` that must be in the model vocabulary.
    key_added
        ``obsm`` key of the embedding.
    pretrain_kwargs
        Keyword arguments of :func:`scrobust_pretrain` when ``model`` is None.
    device, rng, progress
        Torch device, seed (for ``"random"`` order and pre-training), progress bar.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or a copy when ``copy=True``), having written
    ``obsm[key_added]`` (``n_obs × d_model``, float32) and ``uns[key_added]['params']``.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        For invalid data (see :func:`scrobust_pretrain`), a cell without non-zero
        vocabulary genes, or fewer than ``min_shared_genes`` shared genes.
    """
    check_positive(n_genes=n_genes, batch_size=batch_size)
    check_copy(adata, copy)
    if gene_order not in ("unique", "random"):
        raise ValueError(f"gene_order must be 'unique' or 'random', got {gene_order!r}.")
    if model is None:
        kw = dict(layer=layer, input_scale=input_scale, device=device, rng=rng, progress=progress)
        model = scrobust_pretrain(adata, **{**kw, **dict(pretrain_kwargs or {})})
    emb = model.embed(
        adata,
        layer=layer,
        input_scale=input_scale,
        n_genes=n_genes,
        gene_order=gene_order,
        batch_size=batch_size,
        min_shared_genes=min_shared_genes,
        device=device,
        rng=rng,
        progress=progress,
    )
    target = adata.copy() if copy else adata
    target.obsm[key_added] = emb
    target.uns[key_added] = {
        "params": make_params(
            n_genes=n_genes,
            gene_order=gene_order,
            layer=layer,
            input_scale=input_scale,
            model=repr(model),
            device=str(resolve_device(device)),
            rng=rng,
        )
    }
    return target if copy else None


# ============================================================================ annotation
def scrobust_annotate(
    adata_query: ad.AnnData,
    adata_ref: ad.AnnData | None = None,
    *,
    labels_key: str | None = None,
    model: ScRobustModel | None = None,
    layer: str | None = None,
    ref_layer: str | None = None,
    input_scale: InputScale = "counts",
    preset: Literal["default", "paper"] = "default",
    head: Literal["wide_and_deep", "deep", "wide"] | None = None,
    n_wide_genes: int = 2000,
    val_fraction: float | None = None,
    patience: int | None = None,
    n_genes: int = 800,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    class_weight: str | Mapping[str, float] | None = "balanced",
    min_shared_genes: int = 10,
    pretrain_kwargs: Mapping[str, Any] | None = None,
    key_added: str = _keys.SCROBUST_LABEL,
    confidence_key: str = _keys.SCROBUST_CONFIDENCE,
    return_model: bool = False,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
):
    """Annotate cells with a fine-tuned scRobust classifier ("highly unique genes").

    Fine-tuning (Park & Lee 2024, eqs. 12–15): each reference cell is encoded from its
    non-zero genes ordered by how rarely each is detected in the reference (rarest first),
    the first ``n_genes`` (800 as the paper); the CLS output feeds a two-layer classifier,
    and encoder and classifier are trained with (class-weighted) cross-entropy:
    :meth:`ScRobustModel.finetune`, through :func:`sctorch.models.fit`. ``val_fraction``
    of the reference (stratified) is held out and the epoch with its best macro-F1 is kept,
    as the authors' code does. Query cells are encoded the same way, in the reference's
    detection order; the label is the arg-max of the softmax, the confidence its
    probability (:meth:`ScRobustModel.predict_proba`). Query genes missing from the
    vocabulary are skipped (counted in a warning).

    ``preset="paper"``: the paper's classifier (``head="deep"``), 20 epochs at
    ``lr=5e-5`` (the authors' code: 10–30, picked by validation macro-F1). ``"default"``
    departs from it because the deep path alone lost to a balanced logistic regression
    (``benchmarks/results/scrobust.md``): ``head="wide_and_deep"`` fits a logistic
    regression on the log-normalised expression of the reference's ``n_wide_genes`` HVGs
    (the wide path, frozen), trains the deep path on its out-of-fold logits, and keeps
    the deep path only if it improves both macro-F1 and cross-entropy of the held-out
    part; the wide path is then refitted on the whole reference. ``"wide"`` is the wide
    path alone. 10 epochs at ``lr=1e-3`` (CPU-sized). Cost grows with ``n_genes``; ~2,000
    HVGs in reference and query shorten every cell's sequence.

    Parameters
    ----------
    adata_query
        Cells to annotate, raw counts (or log1p values with ``input_scale="log1p"``); if
        backed, read ``batch_size`` cells at a time.
    adata_ref
        Labelled reference, same scale (if backed: read by blocks into sparse tokens).
        ``None`` uses ``model``, fine-tuned by a call with ``return_model=True``.
    labels_key
        ``adata_ref.obs`` column holding the cell types (required with ``adata_ref``).
    model
        A pre-trained model to fine-tune (a copy is fine-tuned; ``model`` is not changed).
        ``None`` pre-trains one on ``adata_ref`` first with ``pretrain_kwargs``.
    layer, ref_layer, input_scale
        Layers of query and reference (``None``: ``.X``); ``"counts"``, ``"log1p"`` or
        ``"auto"``, for both (see :func:`scrobust_pretrain`).
    preset, head, n_wide_genes
        Preset (also used to pre-train when ``model`` is None), classifier layout and
        the wide path's number of HVGs (see above; ``None``: the preset's).
    val_fraction, patience
        Held-out part of the reference for choosing the epoch (``None``: 0.1; 0 keeps the
        last epoch) and epochs without improvement before stopping.
    n_genes, epochs, batch_size, lr
        Highly unique genes per cell (800 as the paper); fine-tuning passes (at most),
        cells per step, Adam learning rate (``None``: the preset's).
    class_weight
        Weights of the classes in the cross-entropy: ``"balanced"`` (default) weighs class
        ``c`` by ``n / (n_classes × n_c)``, as scikit-learn's ``class_weight="balanced"``;
        a mapping ``{label: weight}`` (every reference label) or ``None`` (unweighted).
        The paper does not say how rare types are handled (it reports macro-F1);
        ``None`` is the authors' plain cross-entropy. Measured effect:
        ``benchmarks/results/scrobust.md``.
    min_shared_genes
        Fewest query genes that must be in the vocabulary.
    pretrain_kwargs
        Arguments of :func:`scrobust_pretrain` when ``model`` is None.
    key_added, confidence_key
        ``obs`` keys of the labels (categorical) and confidences (float32, in [0, 1]).
    return_model
        Also return the fine-tuned :class:`ScRobustModel`.
    device, rng, progress, copy
        Torch device, seed, progress bar; write into a copy of ``adata_query``, return it.

    Returns
    -------
    ``None``, the copy (``copy=True``), the fine-tuned model (``return_model=True``), or
    ``(copy, model)``. Writes ``obs[key_added]``, ``obs[confidence_key]`` and
    ``uns[key_added]['params']`` into the query.

    Raises
    ------
    KeyError
        If ``labels_key`` or a layer is missing.
    ValueError
        If ``labels_key`` is not given with a reference, labels contain NaN or a single
        class, no reference and no fine-tuned model are given, data are invalid, a cell
        has no non-zero vocabulary gene, or the query shares fewer than
        ``min_shared_genes`` genes with the vocabulary.
    """
    from ..scrobust._presets import preset_values

    p = preset_values(
        preset, "finetune", dict(head=head, val_fraction=val_fraction, lr=lr, epochs=epochs)
    )
    epochs, lr = p["epochs"], p["lr"]
    check_copy(adata_query, copy)
    check_positive(
        n_genes=n_genes,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        n_wide_genes=n_wide_genes,
        patience=patience,
    )
    # ---- validate everything before training or writing
    if adata_ref is None:
        if model is None or not model.is_fine_tuned:
            raise ValueError(
                "Give adata_ref= and labels_key= to train a classifier, or a "
                "model fine-tuned by scrobust_annotate(..., return_model=True)."
            )
        labels = None
    else:
        labels = _check_labels(adata_ref, labels_key)
        _class_weights(labels, class_weight)
    vocab_of = (
        model
        if model is not None
        else ScRobustModel(None, _build_vocab(None, adata_ref.var_names), {})
    )
    qtok = vocab_of.tokens(
        adata_query,
        layer=layer,
        input_scale=input_scale,
        on_disk=True,
        min_shared_genes=min_shared_genes,
        what="adata_query",
    )
    seed = seed_int(rng)
    if adata_ref is not None:
        if model is None:
            kw = dict(
                layer=ref_layer,
                input_scale=input_scale,
                device=device,
                rng=seed,
                progress=progress,
                preset=preset,
            )
            model = scrobust_pretrain(adata_ref, **{**kw, **dict(pretrain_kwargs or {})})
        model = model.finetune(
            adata_ref,
            labels,
            layer=ref_layer,
            input_scale=input_scale,
            n_genes=n_genes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            class_weight=class_weight,
            min_shared_genes=min_shared_genes,
            device=device,
            rng=seed,
            progress=progress,
            head=p["head"],
            n_wide_genes=n_wide_genes,
            val_fraction=p["val_fraction"],
            patience=patience,
        )
    prob = model.predict_proba(
        qtok, n_genes=n_genes, batch_size=batch_size, device=device, progress=progress
    )
    target = adata_query.copy() if copy else adata_query
    pred = np.asarray(model.classes)[prob.argmax(1)]
    target.obs[key_added] = pd.Categorical(pred, categories=model.classes)
    target.obs[confidence_key] = prob.max(1).astype(np.float32)
    target.uns[key_added] = {
        "params": make_params(
            labels_key=labels_key,
            n_genes=n_genes,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            preset=preset,
            head=model.config.head,
            val_fraction=p["val_fraction"],
            class_weight=None
            if adata_ref is None or class_weight is None
            else (
                class_weight
                if isinstance(class_weight, str)
                else {str(k): float(v) for k, v in class_weight.items()}
            ),
            layer=layer,
            ref_layer=ref_layer,
            input_scale=input_scale,
            n_query_genes_skipped=qtok.n_missing,
            model=repr(model),
            device=str(resolve_device(device)),
            rng=rng,
        )
    }
    out = target if copy else None
    if return_model:
        return (out, model) if copy else model
    return out


# ============================================================================ pathways
def scrobust_pathway_scores(
    adata: ad.AnnData,
    gene_sets: Mapping[str, Sequence[str]] | str | Path,
    model: ScRobustModel,
    *,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    min_genes: int = 2,
    key_added: str = _keys.SCROBUST_PATHWAYS,
    label_key: str = _keys.SCROBUST_PATHWAY_LABEL,
    copy: bool = False,
) -> ad.AnnData | None:
    r"""Pathway scores and pathway-based (unsupervised) annotation (eqs. 16–20).

    For a gene set :math:`S` with unit-norm trained gene vectors :math:`\hat e_g` (eq. 1),
    the pathway embedding is :math:`p_S = \sum_{g \in S} \hat e_g` (eqs. 16–17), the
    pathway-informed cell embedding :math:`c_S = \sum_{g \in S} x_{cg} \hat e_g` with the
    cell's log-normalised expression :math:`x_{cg}` (eqs. 18–19), and the score uses angle
    and magnitude (eq. 20): :math:`s(c_S, p_S) = c_S \cdot p_S / \lVert p_S \rVert^2 =
    \lVert c_S \rVert \cos\theta / \lVert p_S \rVert`, the projection of :math:`c_S` on
    :math:`p_S` in units of :math:`\lVert p_S \rVert` (1 when the cell expresses every gene
    of the set at log-expression 1). Each cell's label is the set with the highest score;
    with cell-type marker sets this is an unsupervised annotation.

    Both embeddings are built from the trained gene vectors, following the description
    of eqs. 16–19 (the set's gene embeddings, unscaled / scaled by expression). The
    authors' code instead passes the set through the encoder and reads the CLS output;
    in this post-LayerNorm encoder that output has a fixed norm, so the magnitude that
    eq. 20 relies on would be lost. Genes a cell does not express contribute nothing.

    Set names are kept as given in ``obs[label_key]`` and ``uns[key_added]['names']``;
    the ``obsm`` DataFrame columns and the keys of ``genes_used`` are h5ad-safe versions
    of them: every ``"/"`` becomes ``"_"`` (``"NK/ILC"`` → ``"NK_ILC"``, a clash with an
    existing name gets ``-1``, ``-2``…), because h5py would read ``"/"`` as a path
    separator when the AnnData is written to ``.h5ad``. Column ``j`` is the set
    ``uns[key_added]['names'][j]``.

    Parameters
    ----------
    adata
        Cells × genes, raw counts (or log1p with ``input_scale="log1p"``).
    gene_sets
        ``{name: [gene symbols]}``, a ``.gmt``/``.json`` path, or an alias of
        :func:`sctorch.datasets.gene_sets` (e.g. ``"human_immune_markers"``).
    model
        A pre-trained (or fine-tuned) :class:`ScRobustModel`.
    layer, input_scale
        Input matrix and its scale (see :func:`scrobust_pretrain`).
    min_genes
        Sets with fewer genes in both ``adata`` and the vocabulary are dropped (warning).
    key_added, label_key
        ``obsm`` key of the scores and ``obs`` key of the labels.
    copy
        Return a modified copy.

    Returns
    -------
    ``None`` (or a copy), having written ``obsm[key_added]`` (DataFrame,
    ``n_obs × n_sets`` kept, float32, h5ad-safe column names), ``obs[label_key]``
    (categorical, original set names) and ``uns[key_added]`` = {``names`` (original set
    names, in column order), ``genes_used`` (per column name), ``params``}.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        For invalid data, a bad ``gene_sets`` argument, or when no set keeps
        ``min_genes`` genes.
    FileNotFoundError
        If a gene-set file is not found.
    """
    from ..scrobust._pathways import (
        gene_set_scores,
        h5ad_safe_names,
        load_gene_sets,
        usable_gene_sets,
    )

    check_positive(min_genes=min_genes)
    check_copy(adata, copy)
    sets = load_gene_sets(gene_sets)
    tok = model.tokens(adata, layer=layer, input_scale=input_scale, min_shared_genes=1)
    kept, dropped = usable_gene_sets(model, tok, sets, min_genes)
    scores = gene_set_scores(model, tok, kept)
    names = list(kept)
    columns = h5ad_safe_names(names)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = pd.DataFrame(
        scores, index=adata.obs_names.copy(), columns=pd.Index(columns)
    )
    target.obs[label_key] = pd.Categorical(np.asarray(names)[scores.argmax(1)], categories=names)
    target.uns[key_added] = {
        "names": np.asarray(names, dtype=object),
        "genes_used": {
            c: [model.vocab[i] for i in v] for c, v in zip(columns, kept.values(), strict=True)
        },
        "params": make_params(
            min_genes=min_genes,
            layer=layer,
            input_scale=input_scale,
            n_sets_dropped=len(dropped),
            model=repr(model),
        ),
    }
    return target if copy else None


# ============================================================================ markers
def scrobust_marker_genes(
    adata: ad.AnnData,
    groupby: str,
    model: ScRobustModel,
    *,
    n_genes: int = 10,
    n_tokens: int = 800,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    method: Literal["specific", "mean"] = "specific",
    batch_size: int = 64,
    key_added: str = _keys.SCROBUST_MARKERS,
    device: str | None = None,
    progress: bool = True,
    copy: bool = False,
) -> ad.AnnData | None:
    """Marker genes from the encoder's CLS-to-gene attention, per group.

    Every cell is encoded from its ``n_tokens`` highly unique genes (as for annotation);
    the attention that the CLS query pays to each gene in the last encoder layer (mean
    over heads) is that gene's importance for the cell (0 for genes not among its
    tokens). Per group, the importance is averaged over the group's cells. With
    ``method="specific"`` (default) the score is the group mean minus the mean over all
    other cells, so genes every cell attends to (housekeeping genes) do not dominate;
    ``"mean"`` ranks by the group mean alone. The paper reads markers off attention
    without fixing the aggregation; this contrast is our choice.

    Parameters
    ----------
    adata
        Cells × genes, raw counts (or log1p with ``input_scale="log1p"``).
    groupby
        ``obs`` column of groups (e.g. cell types or Leiden clusters).
    model
        A pre-trained or fine-tuned :class:`ScRobustModel`.
    n_genes, n_tokens
        Markers reported per group; genes per cell fed to the encoder.
    layer, input_scale
        Input matrix and its scale (see :func:`scrobust_pretrain`).
    method
        ``"specific"`` or ``"mean"`` (see above).
    batch_size, key_added
        Cells per forward pass; ``uns`` key of the result.
    device, progress, copy
        Torch device, progress bar, return a modified copy.

    Returns
    -------
    ``None`` (or a copy), having written ``uns[key_added]`` in the layout of
    :func:`scanpy.tl.rank_genes_groups`: ``names``, ``scores``, ``logfoldchanges``
    (log2 ratio of group to rest mean attention), ``pvals`` and ``pvals_adj`` (NaN:
    attention gives no test) as record arrays with one field per group
    (``n_genes`` rows), and ``params`` (``groupby``, ``reference='rest'``,
    ``method='scrobust_attention'``). Read it with
    ``scanpy.get.rank_genes_groups_df(adata, group, key=key_added)``.

    Raises
    ------
    KeyError
        If ``groupby`` or ``layer`` is missing.
    ValueError
        For invalid data, NaN groups, fewer than 2 groups, or a bad ``method``.
    """
    from ..scrobust._markers import attention_markers

    check_positive(n_genes=n_genes, n_tokens=n_tokens, batch_size=batch_size)
    check_copy(adata, copy)
    if method not in ("specific", "mean"):
        raise ValueError(f"method must be 'specific' or 'mean', got {method!r}.")
    result = attention_markers(
        adata,
        groupby,
        model,
        n_genes=n_genes,
        n_tokens=n_tokens,
        layer=layer,
        input_scale=input_scale,
        method=method,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    target = adata.copy() if copy else adata
    target.uns[key_added] = result
    return target if copy else None
