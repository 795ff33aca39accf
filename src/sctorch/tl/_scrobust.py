"""scRobust public functions: validate -> :class:`ScRobustModel` -> write AnnData keys.

Park & Lee, "scRobust: a robust self-supervised learning strategy to tackle the inherent
sparsity of single-cell RNA-seq data", Brief Bioinform 2024, 25(6):bbae586, §Methods
(eqs. 1–20). The method lives in :mod:`sctorch.scrobust`; these functions check
arguments, resolve the settings (:class:`~sctorch.scrobust.ScRobustConfig`: preset, then
``config``, then keywords; :func:`sctorch._config.resolve_config`), call the model and
write keys. Measured: ``docs/which_method.md``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _keys
from .._config import renamed, resolve_config, warn_unused
from .._docs import doc_params, fill
from .._utils import (
    RandomState,
    accepts_random_state,
    check_anndata,
    check_copy,
    check_model,
    check_positive,
    make_params,
    resolve_device,
    seed_int,
    warn_small_classes,
)
from ..scrobust._config import FINETUNE_FIELDS, PRETRAIN_FIELDS, ScRobustConfig
from ..scrobust._data import _build_vocab, _check_labels, _class_weights
from ..scrobust._model import ScRobustModel

if TYPE_CHECKING:
    import anndata as ad

__all__ = [
    "ScRobustConfig",
    "ScRobustModel",
    "scrobust_annotate",
    "scrobust_embed",
    "scrobust_marker_genes",
    "scrobust_pathway_scores",
    "scrobust_pretrain",
]

InputScale = Literal["counts", "log1p", "auto"]

#: scRobust's recurring parameters (beside the shared ones of :mod:`sctorch._docs`)
_FRAGMENTS = {
    "input_scale": """\
input_scale
    Scale of the input: ``"counts"`` (raw integer counts, log-normalised to 10⁴ per cell
    then log1p, as the authors' code), ``"log1p"`` (log-normalised values; integer counts
    and values above 30 are refused) or ``"auto"`` (counts when every value is a
    non-negative integer); see :func:`sctorch._utils.resolve_input_scale`.""",
    "model": """\
model
    A pre-trained (or fine-tuned) :class:`ScRobustModel`, from :func:`scrobust_pretrain`
    or :meth:`ScRobustModel.load`.""",
    "scrobust_kwargs": """\
**kwargs
    Settings of :class:`~sctorch.scrobust.ScRobustConfig` given one by one; they override
    ``preset`` and ``config``. An unknown name raises ``TypeError`` naming the closest
    setting; a setting this call does not use warns (``UserWarning``).""",
}

#: annotation keywords that name fine-tuning settings (ScRobustConfig fields)
_FINETUNE_KEYWORDS = {
    "epochs": "finetune_epochs",
    "lr": "finetune_lr",
    "batch_size": "finetune_batch_size",
    "patience": "finetune_patience",
}

#: settings whose ``None`` has no meaning (it used to mean "the preset's value")
_NOT_NONE = tuple(f.name for f in dataclasses.fields(ScRobustConfig) if "None" not in str(f.type))


def _docs(func):
    """Fill scRobust's own docstring placeholders (then :func:`doc_params` the shared ones)."""
    func.__doc__ = fill(func.__doc__, _FRAGMENTS)
    return func


def _old_values(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept the former sentinels for one release, with a ``FutureWarning``.

    ``view_thinning=False`` and ``select="none"`` are now ``None`` (off),
    ``epochs="budget"`` is ``epochs=None``; ``None`` for a setting whose ``None`` has no
    meaning used to mean "the preset's value": it is dropped (the preset's value is kept).
    """
    old = {"view_thinning": False, "select": "none", "epochs": "budget"}
    for name, value in list(kwargs.items()):
        if name in old and type(value) is type(old[name]) and value == old[name]:
            msg = f"{name}={value!r} is now {name}=None"
            kwargs[name] = None
        elif value is None and name in _NOT_NONE:
            msg = f"{name}=None (the preset's value) is now expressed by leaving {name} out"
            del kwargs[name]
        else:
            continue
        warnings.warn(
            f"{where}(): {msg}; the old spelling will be removed in a later release.",
            FutureWarning,
            stacklevel=4,
        )
    return kwargs


def _pretrain_kwargs(
    pretrain_kwargs: Mapping[str, Any], base: ScRobustConfig, where: str
) -> tuple[ScRobustConfig, dict[str, Any]]:
    """The former ``pretrain_kwargs=``: ``(pre-training settings, call keywords)``."""
    warnings.warn(
        f"{where}(): pretrain_kwargs= is deprecated; give the pre-training settings as "
        "keywords or in config= (fields of ScRobustConfig).",
        FutureWarning,
        stacklevel=4,
    )
    pre = dict(pretrain_kwargs)
    call = {k: pre.pop(k) for k in ("layer", "vocab", "device", "rng", "progress") if k in pre}
    name, cfg = pre.pop("preset", None), pre.pop("config", None)
    fields = {k: v for k, v in pre.items() if v is not None}
    if name is None and cfg is None:
        settings = base.replace(**fields)
        settings.validate()
    else:
        settings = resolve_config(ScRobustConfig, name, cfg, fields)
    return settings, call


def _pretrain(
    adata: ad.AnnData,
    settings: ScRobustConfig,
    *,
    layer: str | None,
    vocab,
    device: str | None,
    rng: RandomState,
    progress: bool,
) -> ScRobustModel:
    """Pre-train a fresh :class:`ScRobustModel` on ``adata`` with validated ``settings``."""
    tokens = _build_vocab(vocab, adata.var_names)
    if adata.n_obs < 2:
        raise ValueError(f"Contrastive pre-training needs at least 2 cells, got {adata.n_obs}.")
    s = settings
    return ScRobustModel(None, config=s.network_config(len(tokens)), vocab=tokens).fit(
        adata,
        layer=layer,
        input_scale=s.input_scale,
        epochs=s.pretrain_epochs(adata.n_obs),
        batch_size=int(s.batch_size),
        lr=float(s.lr),
        min_shared_genes=s.min_shared_genes,
        device=device,
        rng=rng,
        progress=progress,
        select=s.select,
        patience=s.patience,
    )


# ============================================================================ pre-training
@accepts_random_state
@doc_params
@_docs
def scrobust_pretrain(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    vocab: str | Path | Sequence[str] | None = None,
    preset: Literal["default", "paper"] = "default",
    config: ScRobustConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    **kwargs: Any,
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
    ``benchmarks/results/scrobust_depth.md``. The settings are the fields of
    :class:`~sctorch.scrobust.ScRobustConfig` (presets: ``ScRobustConfig.PRESETS``).

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``), dense or sparse (sparse stays sparse), or backed
        (``anndata.read_h5ad(path, backed="r")``: one pass checks it, then the cells of each
        mini-batch are read from the file; the model equals the one trained from memory).
        Raw counts by default (``input_scale``).
    {layer}
    vocab
        ``None`` builds the vocabulary from ``adata.var_names`` (ids 0–4 = PAD, SEP,
        UNKNOWN, CLS, MASK, then the genes); a path reads an ``ID,SYMBOL`` CSV such as
        scRobust's ``whole_human_vocab.csv`` (ids 0–3 = PAD, SEP, UNKWON, CLS); a
        sequence of gene names is used after the five special tokens. Genes of ``adata``
        missing from a given vocabulary are skipped (counted in a warning).
    {preset}
    {config}
    {device}
    {rng}
    {random_state}
    {progress}
    {scrobust_kwargs}
        The pre-training settings: ``input_scale``, ``token_values``, ``view_thinning``
        (``None``: off), ``select`` (``None``: off, the last epoch), ``patience``,
        ``n_genes_per_view``, ``d_model``, ``n_heads``, ``n_layers``, ``dim_feedforward``,
        ``dropout``, ``head_dropout``, ``temperature``, ``epochs`` (``None``: the
        pre-training budget rule, ``ceil(320,000 / n_obs)`` epochs, at most 200),
        ``batch_size``, ``lr``, ``min_shared_genes``. Thinning and ``select="knn"`` need
        counts input.

    Returns
    -------
    The pre-trained :class:`ScRobustModel` (in evaluation mode), with
    ``history['pretrain_loss']``, ``['pretrain_contrastive']``, ``['pretrain_mse']``
    (epoch means) and the selection score (``['pretrain_knn_agreement']`` or
    ``['pretrain_val_contrastive']``). ``adata`` is not changed.

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    TypeError
        For a keyword that is no setting of :class:`~sctorch.scrobust.ScRobustConfig`.
    ValueError
        If the data do not hold the declared ``input_scale``, ``var_names`` are
        duplicated, a cell has no non-zero vocabulary gene, fewer than
        ``min_shared_genes`` genes are in the vocabulary, fewer than 2 cells are given, the
        preset is unknown or a setting is out of range (``batch_size`` ≥ 2, ``d_model``
        divisible by ``n_heads``).
    FileNotFoundError
        If a vocabulary file does not exist.
    """
    where = "scrobust_pretrain"
    kwargs = _old_values(dict(kwargs), where)
    settings = resolve_config(ScRobustConfig, preset, config, kwargs)
    warn_unused(
        kwargs, FINETUNE_FIELDS, "scrobust_pretrain only pre-trains (see scrobust_annotate)"
    )
    return _pretrain(
        adata, settings, layer=layer, vocab=vocab, device=device, rng=rng, progress=progress
    )


# ============================================================================ embedding
@accepts_random_state
@doc_params
@_docs
def scrobust_embed(
    adata: ad.AnnData,
    model: ScRobustModel | None = None,
    *,
    layer: str | None = None,
    key_added: str = _keys.SCROBUST_EMBED,
    n_tokens: int = 400,
    gene_order: Literal["unique", "random"] = "unique",
    batch_size: int = 64,
    preset: Literal["default", "paper"] = "default",
    config: ScRobustConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | None:
    """Cell embeddings from the CLS output of a scRobust encoder.

    Each cell is encoded from up to ``n_tokens`` of its non-zero genes; the CLS output
    (``d_model`` values) is its embedding. By default the genes are the cell's "highly
    unique genes" — those detected in the fewest cells of ``adata`` first (eq. 12, as the
    authors' ``get_cell_embeddings``); ``gene_order="random"`` draws a random subset.

    :meth:`ScRobustModel.embed` plus writing the keys; backed AnnData are read by blocks.
    Measured against PCA: ``benchmarks/results/scrobust_depth.md``.

    Parameters
    ----------
    adata
        Cells × genes, raw counts (or log1p-normalised with ``input_scale="log1p"``;
        raw counts declared as log1p are refused); backed AnnData are read by blocks.
    model
        A model from :func:`scrobust_pretrain` or :meth:`ScRobustModel.load`; ``None``
        pre-trains one on ``adata`` first (with the pre-training settings of ``preset``,
        ``config`` and ``**kwargs``, as :func:`scrobust_pretrain`).
    {layer}
    key_added
        ``obsm`` key of the embedding (and ``uns`` key of its ``params``).
    n_tokens
        Genes (tokens) per cell fed to the encoder (400 as the authors' code). Formerly
        ``n_genes`` (still accepted, with a ``FutureWarning``).
    gene_order
        ``"unique"`` (rarest-detected genes first) or ``"random"``.
    batch_size
        Cells per forward pass (pre-training's is the setting ``batch_size`` of
        ``config``).
    {preset}
    {config}
    {device}
    rng
        Seed (int or :class:`numpy.random.Generator`) of the ``"random"`` order and of
        pre-training; the same seed on the same device gives the same result.
    {random_state}
    {progress}
    {copy}
    {scrobust_kwargs}
        ``input_scale`` and ``min_shared_genes`` (fewest genes of ``adata`` in the model's
        vocabulary) always; the pre-training settings (see :func:`scrobust_pretrain`)
        when ``model`` is ``None``. The former ``pretrain_kwargs=`` (a dict of
        :func:`scrobust_pretrain` keywords) is still accepted, with a ``FutureWarning``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``), having written ``obsm[key_added]``
    (``n_obs × d_model``, float32) and ``uns[key_added]['params']``.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    TypeError
        For a keyword that is no setting of :class:`~sctorch.scrobust.ScRobustConfig`.
    ValueError
        For invalid data (see :func:`scrobust_pretrain`), a cell without non-zero
        vocabulary genes, fewer than ``min_shared_genes`` shared genes, a bad
        ``gene_order`` or ``copy=True`` on a backed AnnData.
    """
    where = "scrobust_embed"
    kwargs = dict(kwargs)
    renamed(kwargs, old="n_genes", new="n_tokens", where=where)
    n_tokens = kwargs.pop("n_tokens", n_tokens)
    pretrain_kwargs = kwargs.pop("pretrain_kwargs", None)
    kwargs = _old_values(kwargs, where)
    settings = resolve_config(ScRobustConfig, preset, config, kwargs)
    check_positive(n_tokens=n_tokens, batch_size=batch_size)
    check_copy(adata, copy)
    if gene_order not in ("unique", "random"):
        raise ValueError(f"gene_order must be 'unique' or 'random', got {gene_order!r}.")
    if model is None:
        warn_unused(kwargs, FINETUNE_FIELDS, "scrobust_embed does not fine-tune")
        call = dict(layer=layer, device=device, rng=rng, progress=progress, vocab=None)
        if pretrain_kwargs is not None:
            settings, more = _pretrain_kwargs(pretrain_kwargs, settings, where)
            call.update(more)
        model = _pretrain(adata, settings, **call)
    else:
        warn_unused(
            kwargs,
            set(PRETRAIN_FIELDS) | set(FINETUNE_FIELDS),
            "model= is given (nothing is trained)",
        )
    emb = model.embed(
        adata,
        layer=layer,
        input_scale=settings.input_scale,
        n_tokens=n_tokens,
        gene_order=gene_order,
        batch_size=batch_size,
        min_shared_genes=settings.min_shared_genes,
        device=device,
        rng=rng,
        progress=progress,
    )
    target = adata.copy() if copy else adata
    target.obsm[key_added] = emb
    target.uns[key_added] = {
        "params": make_params(
            n_tokens=n_tokens,
            gene_order=gene_order,
            layer=layer,
            input_scale=settings.input_scale,
            model=repr(model),
            device=str(resolve_device(device)),
            rng=rng,
        )
    }
    return target if copy else None


# ============================================================================ annotation
def _original_labels(classes, adata_ref, labels_key):
    """The model's class names (strings) as the reference's own label values.

    Integer (or other non-string) reference labels come back with their own type; without
    a reference the class names are returned as stored.
    """
    if adata_ref is None:
        return list(classes)
    col = adata_ref.obs[labels_key]
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.unique()
    by_name = {str(v): v for v in values}
    return [by_name.get(c, c) for c in classes]


@accepts_random_state
@doc_params
@_docs
def scrobust_annotate(
    adata_query: ad.AnnData,
    adata_ref: ad.AnnData | None = None,
    *,
    labels_key: str | None = None,
    model: ScRobustModel | None = None,
    layer: str | None = None,
    key_added: str = _keys.SCROBUST_LABEL,
    preset: Literal["default", "paper"] = "default",
    config: ScRobustConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
    return_model: bool = False,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | ScRobustModel | tuple[ad.AnnData, ScRobustModel] | None:
    """Annotate cells with a fine-tuned scRobust classifier ("highly unique genes").

    Fine-tuning (Park & Lee 2024, eqs. 12–15): each reference cell is encoded from its
    non-zero genes ordered by how rarely each is detected in the reference (rarest first),
    the first ``n_tokens`` (800 as the paper); the CLS output feeds a two-layer classifier,
    and encoder and classifier are trained with (class-weighted) cross-entropy:
    :meth:`ScRobustModel.finetune`, through :func:`sctorch.models.fit`. ``validation_fraction``
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
    (the wide path, frozen; its L2 strength chosen by out-of-fold macro-F1 on the
    reference, ``wide_c``), trains the deep path on its out-of-fold logits, and keeps
    the deep path only if it improves both macro-F1 and cross-entropy of the held-out
    part; the wide path is then refitted on the whole reference. ``"wide"`` is the wide
    path alone. 10 epochs at ``lr=1e-3`` (CPU-sized). Cost grows with ``n_tokens``; ~2,000
    HVGs in reference and query shorten every cell's sequence.

    Parameters
    ----------
    adata_query
        Cells to annotate, raw counts (or log1p values with ``input_scale="log1p"``); if
        backed, read ``finetune_batch_size`` cells at a time.
    adata_ref
        Labelled reference, same scale (if backed: read by blocks into sparse tokens).
        ``None`` uses ``model``, fine-tuned by a call with ``return_model=True``.
    labels_key
        ``adata_ref.obs`` column holding the cell types (required with ``adata_ref``).
    model
        A pre-trained model to fine-tune (a copy is fine-tuned; ``model`` is not changed),
        or a fine-tuned one to classify with when ``adata_ref`` is ``None``. ``None``
        pre-trains one on ``adata_ref`` first (pre-training settings of ``preset``,
        ``config`` and ``**kwargs``, as :func:`scrobust_pretrain`).
    layer
        Layer of ``adata_query`` holding its input (``None``: ``.X``); the reference's is
        ``ref_layer`` (see ``**kwargs``).
    key_added
        ``obs`` key of the labels (categorical) and ``uns`` key of the ``params``; the
        confidences (float32, in [0, 1]) go to ``obs[confidence_key]``.
    {preset}
        Also used to pre-train when ``model`` is ``None``.
    {config}
    {device}
    {rng}
    {random_state}
    {progress}
    return_model
        Also return the fine-tuned :class:`ScRobustModel` (see Returns).
    copy
        Write into a copy of ``adata_query`` and return it.
    {scrobust_kwargs}
        In this function the keywords ``epochs``, ``lr``, ``batch_size`` and ``patience``
        set the **fine-tuning** settings ``finetune_epochs``, ``finetune_lr``,
        ``finetune_batch_size`` (also cells per forward pass when classifying) and
        ``finetune_patience`` (pre-training's are set through ``config``). The fine-tuning
        settings: ``head``, ``n_wide_genes``, ``wide_c`` (the wide path's inverse L2
        strength; ``None``: chosen by out-of-fold macro-F1), ``validation_fraction`` (formerly
        ``val_fraction``), ``n_tokens`` (highly unique genes per cell, formerly
        ``n_genes``), ``class_weight``, plus ``input_scale`` and ``min_shared_genes`` for
        both AnnData. Two more keywords are accepted here: ``ref_layer`` (layer of
        ``adata_ref``; ``None``: ``.X``) and ``confidence_key`` (``obs`` key of the
        confidences, default ``"scrobust_confidence"``). The former ``pretrain_kwargs=``
        (keywords of :func:`scrobust_pretrain`) is accepted with a ``FutureWarning``.

    Returns
    -------
    ``None``; the copy with ``copy=True``; the fine-tuned model with
    ``return_model=True``; ``(copy, model)`` with both. Writes ``obs[key_added]``,
    ``obs[confidence_key]`` and ``uns[key_added]['params']`` into the query.

    Raises
    ------
    KeyError
        If ``labels_key`` or a layer is missing.
    TypeError
        For a keyword that is no setting of :class:`~sctorch.scrobust.ScRobustConfig`, or
        both a keyword and its fine-tuning name (``epochs`` and ``finetune_epochs``).
    ValueError
        If ``labels_key`` is not given with a reference, labels contain NaN or a single
        class, no reference and no fine-tuned model are given, data are invalid, a cell
        has no non-zero vocabulary gene, the query shares fewer than
        ``min_shared_genes`` genes with the vocabulary, or a setting is out of range.
    """
    check_anndata(adata_ref, "adata_ref", min_cells=1, optional=True)
    where = "scrobust_annotate"
    kwargs = dict(kwargs)
    ref_layer = kwargs.pop("ref_layer", None)
    confidence_key = kwargs.pop("confidence_key", _keys.SCROBUST_CONFIDENCE)
    pretrain_kwargs = kwargs.pop("pretrain_kwargs", None)
    renamed(kwargs, old="val_fraction", new="validation_fraction", where=where)
    renamed(kwargs, old="n_genes", new="n_tokens", where=where)
    for short, name in _FINETUNE_KEYWORDS.items():
        if short in kwargs:
            if name in kwargs:
                raise TypeError(f"{where}() got both {short}= and {name}=; pass one of them.")
            kwargs[name] = kwargs.pop(short)
    kwargs = _old_values(kwargs, where)
    s = resolve_config(ScRobustConfig, preset, config, kwargs)
    check_copy(adata_query, copy)
    # ---- validate everything before training or writing
    if adata_ref is None:
        if model is None or not model.is_fine_tuned:
            raise ValueError(
                "Give adata_ref= and labels_key= to train a classifier, or a "
                "model fine-tuned by scrobust_annotate(..., return_model=True)."
            )
        labels = None
        warn_unused(
            kwargs,
            set(PRETRAIN_FIELDS) | set(FINETUNE_FIELDS) - {"n_tokens", "finetune_batch_size"},
            "no adata_ref is given: the fine-tuned model classifies, nothing is trained",
        )
    else:
        labels = _check_labels(adata_ref, labels_key)
        warn_small_classes(labels, what=f"adata_ref.obs[{labels_key!r}]")
        _class_weights(labels, s.class_weight)
        if model is not None:
            warn_unused(
                kwargs, PRETRAIN_FIELDS, "model= is given: it is fine-tuned, not pre-trained"
            )
    vocab_of = (
        model
        if model is not None
        else ScRobustModel(None, _build_vocab(None, adata_ref.var_names), {})
    )
    qtok = vocab_of.tokens(
        adata_query,
        layer=layer,
        input_scale=s.input_scale,
        on_disk=True,
        min_shared_genes=s.min_shared_genes,
        what="adata_query",
    )
    seed = seed_int(rng)
    if adata_ref is not None:
        if model is None:
            pre, call = s, dict(layer=ref_layer, vocab=None, device=device, rng=seed)
            call["progress"] = progress
            if pretrain_kwargs is not None:
                pre, more = _pretrain_kwargs(pretrain_kwargs, s, where)
                call.update(more)
            model = _pretrain(adata_ref, pre, **call)
        model = model.finetune(
            adata_ref,
            labels,
            layer=ref_layer,
            input_scale=s.input_scale,
            n_tokens=s.n_tokens,
            epochs=s.finetune_epochs,
            batch_size=s.finetune_batch_size,
            lr=s.finetune_lr,
            class_weight=s.class_weight,
            min_shared_genes=s.min_shared_genes,
            device=device,
            rng=seed,
            progress=progress,
            head=s.head,
            n_wide_genes=s.n_wide_genes,
            wide_c=s.wide_c,
            validation_fraction=s.validation_fraction,
            patience=s.finetune_patience,
        )
    prob = model.predict_proba(
        qtok,
        n_tokens=s.n_tokens,
        batch_size=s.finetune_batch_size,
        device=device,
        progress=progress,
    )
    target = adata_query.copy() if copy else adata_query
    classes = _original_labels(model.classes, None if labels is None else adata_ref, labels_key)
    pred = np.asarray(classes, dtype=object)[prob.argmax(1)]
    target.obs[key_added] = pd.Categorical(pred, categories=classes)
    target.obs[confidence_key] = prob.max(1).astype(np.float32)
    cw = s.class_weight
    target.uns[key_added] = {
        "params": make_params(
            labels_key=labels_key,
            n_tokens=s.n_tokens,
            finetune_epochs=s.finetune_epochs,
            finetune_batch_size=s.finetune_batch_size,
            finetune_lr=s.finetune_lr,
            preset=preset,
            head=model.config.head,
            validation_fraction=s.validation_fraction,
            class_weight=None
            if adata_ref is None or cw is None
            else (cw if isinstance(cw, str) else {str(k): float(v) for k, v in cw.items()}),
            layer=layer,
            ref_layer=ref_layer,
            input_scale=s.input_scale,
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
@doc_params
@_docs
def scrobust_pathway_scores(
    adata: ad.AnnData,
    gene_sets: Mapping[str, Sequence[str]] | str | Path,
    model: ScRobustModel,
    *,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    min_genes: int = 2,
    key_added: str = _keys.SCROBUST_PATHWAYS,
    labels_key_added: str = _keys.SCROBUST_PATHWAY_LABEL,
    copy: bool = False,
    **kwargs: Any,
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

    Set names are kept as given in ``obs[labels_key_added]`` and ``uns[key_added]['names']``;
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
    {model}
    {layer}
    {input_scale}
    min_genes
        Sets with fewer genes in both ``adata`` and the vocabulary are dropped (warning).
    key_added
        ``obsm`` key of the scores (and ``uns`` key of the record).
    labels_key_added
        ``obs`` key of the labels (formerly ``label_key``, still accepted with a
        ``FutureWarning``).
    {copy}
    **kwargs
        Only the former name ``label_key``; any other keyword raises ``TypeError``.

    Returns
    -------
    ``None`` (or the copy with ``copy=True``), having written ``obsm[key_added]``
    (DataFrame, ``n_obs × n_sets`` kept, float32, h5ad-safe column names),
    ``obs[labels_key_added]`` (categorical, original set names) and ``uns[key_added]`` =
    {``names`` (original set names, in column order), ``genes_used`` (per column name),
    ``params``}.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    TypeError
        For an unknown keyword.
    ValueError
        For invalid data, a bad ``gene_sets`` argument, ``copy=True`` on a backed
        AnnData, or when no set keeps ``min_genes`` genes.
    FileNotFoundError
        If a gene-set file is not found.
    """
    check_model(model, "ScRobustModel", hint="pre-train one (sct.tl.scrobust_pretrain) or load one")
    from ..scrobust._pathways import (
        gene_set_scores,
        h5ad_safe_names,
        load_gene_sets,
        usable_gene_sets,
    )

    kwargs = renamed(
        dict(kwargs), old="label_key", new="labels_key_added", where="scrobust_pathway_scores"
    )
    labels_key_added = kwargs.pop("labels_key_added", labels_key_added)
    if kwargs:
        raise TypeError(
            f"scrobust_pathway_scores() got an unexpected keyword argument {next(iter(kwargs))!r}"
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
    target.obs[labels_key_added] = pd.Categorical(
        np.asarray(names)[scores.argmax(1)], categories=names
    )
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
@doc_params
@_docs
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
    {model}
    n_genes
        Markers reported per group (as :func:`scanpy.tl.rank_genes_groups`).
    n_tokens
        Highly unique genes (tokens) per cell fed to the encoder.
    {layer}
    {input_scale}
    method
        ``"specific"`` or ``"mean"`` (see above).
    batch_size
        Cells per forward pass.
    key_added
        ``uns`` key of the result.
    {device}
    {progress}
    {copy}

    Returns
    -------
    ``None`` (or the copy with ``copy=True``), having written ``uns[key_added]`` in the
    layout of :func:`scanpy.tl.rank_genes_groups`: ``names``, ``scores``,
    ``logfoldchanges`` (log2 ratio of group to rest mean attention), ``pvals`` and
    ``pvals_adj`` (NaN: attention gives no test) as record arrays with one field per group
    (``n_genes`` rows), and ``params`` (``groupby``, ``reference='rest'``,
    ``method='scrobust_attention'``). Read it with
    ``scanpy.get.rank_genes_groups_df(adata, group, key=key_added)``.

    Raises
    ------
    KeyError
        If ``groupby`` or ``layer`` is missing.
    ValueError
        For invalid data, NaN groups, fewer than 2 groups, a bad ``method`` or
        ``copy=True`` on a backed AnnData.
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
