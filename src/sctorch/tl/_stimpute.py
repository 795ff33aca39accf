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

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys
from .._utils import RandomState, make_params, resolve_device, seed_int


def _warn_overwrite(places: list[str]) -> None:
    """Scanpy overwrites existing keys; so do we, but not silently."""
    if places:
        warnings.warn(f"Overwriting the existing {' and '.join(places)}; pass another "
                      "key_added= to keep them.", UserWarning, stacklevel=3)


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

    return gene_graph(genes, gene_embeddings=gene_embeddings, expression=expression,
                      n_neighbors=n_neighbors, case_sensitive=case_sensitive)


def stimpute(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    genes: Sequence[str] | None = None,
    layer_sp: str | None = None,
    layer_ref: str | None = None,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    n_neighbors: int = 50,
    alpha: float | None = None,
    epochs: int = 10,
    ae_epochs: int = 30,
    n_rounds: int = 2,
    batch_size: int = 512,
    hidden_dim: int = 64,
    graph_neighbors: int = 10,
    reliability_folds: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_cells_per_epoch: int | None = 10_000,
    case_sensitive: bool = True,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.STIMPUTE,
    return_adata: bool = False,
    progress: bool = True,
    copy: bool = False,
    return_model: bool = False,
):
    r"""Impute unmeasured genes of spatial cells from a scRNA-seq reference (stImpute).

    Zeng et al. 2024, Commun Biol 7:1271, §Methods:

    1. An autoencoder (eqs. 1–3; ``genes → 100 → genes``, ReLU) is trained on the
       spatial cells' shared genes; its encoder embeds spatial and reference cells in one
       space, where each spatial cell gets its ``n_neighbors`` cosine-nearest reference
       cells.
    2. A GraphSAGE network (eqs. 7–8; :class:`torch_geometric.nn.SAGEConv`, mean
       aggregation, 2 layers of width 50) runs over the gene graph (eqs. 4–6, see
       :func:`stimpute_gene_graph`); the features of a gene are its expression in the
       cell's neighbours; an MLP (eq. 9) gives one value per gene. The loss (eq. 10) is
       MSE + 2 × (cell-level + gene-level cosine loss), the weight of the authors' code.
    3. AE and GNN are trained alternately for ``n_rounds`` rounds (eq. 11): neighbours
       from the AE → GNN fitted to the measured genes → AE refitted so that
       (AE output + GNN output) / 2 matches the measurement → new neighbours.
    4. Output (eq. 12): ``alpha`` · GNN + (1 − ``alpha``) · mean of the k neighbours'
       expression.
    5. Reliability (eq. 13): the shared genes are split into ``reliability_folds``
       folds; a GNN trained on the other folds (same neighbours) predicts each fold, and
       an MLP learns the out-of-fold cosine similarity from a gene's predicted profile
       (over all spatial cells, or a seeded subset of 4,096 when there are more); it then
       scores every predicted gene. The MLP ends in a linear layer (as the authors' code),
       so its output is clipped to [-1, 1], the range of the cosine it estimates.

    Everything runs in mini-batches of spatial cells: the ``(batch, genes, k)`` features
    are gathered per batch (the batch shrinks so that one block holds at most 2\ :sup:`23`
    values), never for all cells at once.

    Choices where the paper is open (documented here): the MLP head is
    ``50 → 2·hidden_dim → hidden_dim → 1`` with ``hidden_dim=64`` (the authors' code uses
    256 below 10,000 cells and 32 above); the graph keeps each gene's top
    ``graph_neighbors`` edges (the paper's graph is dense); the final neighbours are
    those of the last round; Adam with ``lr`` for the GNN.

    Parameters
    ----------
    adata_sp
        Spatial cells × measured genes. **Raw counts** (integers: normalised here by
        dividing by the cell total, scaling by the median total and log1p, as the paper
        does) or **already normalised, log1p** values (any non-integer input is used as
        given). Spatial coordinates in ``obsm['spatial']`` are carried over with
        ``return_adata=True``.
    adata_ref
        Reference cells × genes, raw counts or normalised (detected the same way).
    genes
        Reference genes to predict. ``None``: every reference gene not measured in
        ``adata_sp``. Genes listed here that ``adata_sp`` does measure are held out of
        training and predicted (for validation).
    layer_sp, layer_ref
        Layers holding the input; ``None`` uses ``.X``.
    gene_embeddings
        Protein embeddings, genes × dimensions DataFrame (e.g.
        :func:`sctorch.pp.esm_gene_embeddings`, :func:`sctorch.datasets.esm2_gene_embeddings`)
        or mapping gene → vector. Genes without one use reference-expression similarity
        (eq. 5); ``None`` builds the whole graph from expression.
    n_neighbors
        Reference neighbours per spatial cell (``k = 50`` in the paper).
    alpha
        Weight of the GNN in eq. 12; ``None``: 0.7 below 10,000 spatial cells, else 0.5.
        ``alpha=0`` returns the k-NN mean only (the GNN is not trained).
    epochs
        Passes over the spatial cells per GNN fit and per AE refit (eq. 11 steps).
    ae_epochs
        Passes of the initial autoencoder training.
    n_rounds
        Rounds of the alternating AE/GNN training (2 in the paper).
    batch_size
        Spatial cells per mini-batch (upper bound; see above).
    hidden_dim
        Width of the MLP head.
    graph_neighbors
        Neighbours per gene in the gene graph.
    reliability_folds
        Folds of the reliability cross-validation; ``0`` skips it (reliability NaN).
    lr, weight_decay
        Adam settings of the GNN.
    max_cells_per_epoch
        Cells visited per training epoch (AE, GNN, AE refit): all cells, shuffled, when
        there are fewer, else a fresh random subset of this size each epoch; ``None``
        always uses every cell (the paper's full passes). Bounds the training cost of very
        large sections; prediction always covers every cell.
    case_sensitive
        Match gene names exactly (default) or ignoring case; ``var_names`` are never
        renamed (outputs use the reference's spelling).
    device
        Torch device; ``None``: CUDA, then MPS, then CPU.
    rng
        Seed; the same seed on the same device gives the same result.
    key_added
        Key of the outputs.
    return_adata
        Return a new AnnData of the predicted genes instead of writing into ``adata_sp``.
    progress
        Show a progress bar.
    copy
        Return a modified copy of ``adata_sp`` instead of writing in place.
    return_model
        Also return the trained :class:`sctorch.models.StImputeModel`, which can
        ``predict`` the same genes for new sections and be saved (``model.save(path)``).

    Returns
    -------
    With ``return_model=True``: ``(result, model)``, ``result`` being what is described
    next. With ``return_adata=True``: a new AnnData, spatial cells × predicted genes (``X``
    float32, on the scale of the normalised input), with ``obs`` and ``obsm['spatial']``
    copied, ``var['reliability']`` and ``uns[key_added]`` (``adata_sp`` is left as it
    was). Otherwise ``None`` (or the copy when ``copy=True``), having written

    - ``obsm[key_added]``: DataFrame, spatial cells × predicted genes (float32);
    - ``uns[key_added]``: ``{'genes', 'reliability'`` (per gene, aligned with
      ``genes``), ``'params'}``.

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
        reference has fewer than ``n_neighbors`` cells, embeddings are inconsistent, or
        a setting is out of range. The inputs are left unchanged.
    ImportError
        If torch-geometric is not installed.
    """
    from ..stimpute._model import StImputeModel

    model = StImputeModel(
        n_neighbors=n_neighbors, alpha=alpha, epochs=epochs, ae_epochs=ae_epochs,
        n_rounds=n_rounds, batch_size=batch_size, hidden_dim=hidden_dim,
        graph_neighbors=graph_neighbors, reliability_folds=reliability_folds, lr=lr,
        weight_decay=weight_decay, max_cells_per_epoch=max_cells_per_epoch,
        case_sensitive=case_sensitive)
    inputs, sim = model._inputs(adata_sp, adata_ref, genes=genes, layer_sp=layer_sp,
                                layer_ref=layer_ref, gene_embeddings=gene_embeddings)
    dev = resolve_device(device)
    seed = seed_int(rng)
    pred = model._fit(inputs, sim, seed=seed, device=dev, progress=progress)
    targets, rel = inputs.targets, model.reliability
    params = make_params(genes="None" if genes is None else list(targets), layer_sp=layer_sp,
                         layer_ref=layer_ref, n_neighbors=n_neighbors, alpha=model.alpha,
                         epochs=epochs, ae_epochs=ae_epochs, n_rounds=n_rounds,
                         batch_size=batch_size, hidden_dim=hidden_dim,
                         graph_neighbors=graph_neighbors, reliability_folds=reliability_folds,
                         lr=lr, weight_decay=weight_decay,
                         max_cells_per_epoch=max_cells_per_epoch, case_sensitive=case_sensitive,
                         gene_embeddings=gene_embeddings is not None, seed=seed,
                         rng=rng, device=str(dev), train_genes=list(inputs.train),
                         **inputs.info)
    record = {"genes": np.asarray(targets, dtype=object), "reliability": rel, "params": params}
    if return_adata:
        out = ad.AnnData(pred, obs=adata_sp.obs.copy(),
                         var=pd.DataFrame({"reliability": rel}, index=pd.Index(targets)))
        if _keys.SPATIAL in adata_sp.obsm:
            out.obsm[_keys.SPATIAL] = np.array(adata_sp.obsm[_keys.SPATIAL], copy=True)
        out.uns[key_added] = record
        return (out, model) if return_model else out
    target = adata_sp.copy() if copy else adata_sp
    _warn_overwrite([f"adata_sp.{where}[{key_added!r}]" for where, store in
                     (("obsm", target.obsm), ("uns", target.uns)) if key_added in store])
    target.obsm[key_added] = pd.DataFrame(pred, index=target.obs_names.copy(),
                                          columns=pd.Index(targets))
    target.uns[key_added] = record
    result = target if copy else None
    return (result, model) if return_model else result


def stimpute_cv(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    n_folds: int = 5,
    layer_sp: str | None = None,
    layer_ref: str | None = None,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    n_neighbors: int = 50,
    alpha: float | None = None,
    epochs: int = 10,
    ae_epochs: int = 30,
    n_rounds: int = 2,
    batch_size: int = 512,
    hidden_dim: int = 64,
    graph_neighbors: int = 10,
    reliability_folds: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_cells_per_epoch: int | None = 10_000,
    case_sensitive: bool = True,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.STIMPUTE_CV,
    progress: bool = True,
) -> pd.DataFrame:
    """The paper's evaluation: k-fold cross-validation over the shared genes.

    The genes shared by ``adata_sp`` and ``adata_ref`` are split into ``n_folds`` folds
    (shuffled, seeded); each fold is predicted by :func:`stimpute` trained on the other
    folds (Zeng et al. 2024, §Results "5-fold cross-validation"). The held-out
    predictions are compared with the measured values on the normalised scale.

    Parameters
    ----------
    adata_sp, adata_ref
        As in :func:`stimpute` (raw counts or normalised; detected).
    n_folds
        Number of gene folds (5 in the paper); at least 2.
    layer_sp, layer_ref, gene_embeddings, n_neighbors, alpha
        As in :func:`stimpute`, for every fold.
    epochs, ae_epochs, n_rounds, batch_size, hidden_dim, graph_neighbors
        As in :func:`stimpute`, for every fold.
    reliability_folds, lr, weight_decay, max_cells_per_epoch, case_sensitive
        As in :func:`stimpute`, for every fold.
    device, rng, progress
        As in :func:`stimpute`, for every fold (every fold uses the same seed).
    key_added
        Name of the layer written to ``adata_sp``.

    Returns
    -------
    DataFrame indexed by the shared genes (``adata_sp`` spelling) with columns
    ``cosine``, ``pearson``, ``mse`` (held-out prediction vs measured, per gene across
    cells, on the normalised scale), ``reliability`` (eq. 13 score from the fold's model)
    and ``fold``. Writes ``adata_sp.layers[key_added]`` (``n_obs × n_vars`` float32; the
    held-out prediction of every shared gene, NaN for genes absent from the reference)
    and ``adata_sp.uns[key_added]`` = ``{'params'}`` (an existing layer of that name is
    overwritten, with a :class:`UserWarning`). The folds are trained by
    :meth:`sctorch.models.StImputeModel.cross_validate`.

    Raises
    ------
    ValueError, KeyError
        As :func:`stimpute`; also if fewer than ``n_folds`` genes are shared,
        ``n_folds < 2``, or ``adata_sp`` has fewer than 2 cells (the per-gene scores are
        correlations across cells). ``adata_sp`` is left unchanged on error.
    """
    from ..stimpute._model import StImputeModel

    scores, layer, info = StImputeModel._cross_validate(
        adata_sp, adata_ref, n_folds=n_folds, layer_sp=layer_sp, layer_ref=layer_ref,
        gene_embeddings=gene_embeddings, device=device, rng=rng, progress=progress,
        n_neighbors=n_neighbors, alpha=alpha, epochs=epochs, ae_epochs=ae_epochs,
        n_rounds=n_rounds, batch_size=batch_size, hidden_dim=hidden_dim,
        graph_neighbors=graph_neighbors, reliability_folds=reliability_folds, lr=lr,
        weight_decay=weight_decay, max_cells_per_epoch=max_cells_per_epoch,
        case_sensitive=case_sensitive)
    _warn_overwrite([f"adata_sp.layers[{key_added!r}]"] if key_added in adata_sp.layers else [])
    adata_sp.layers[key_added] = layer
    adata_sp.uns[key_added] = {"params": make_params(
        n_folds=n_folds, layer_sp=layer_sp, layer_ref=layer_ref, n_neighbors=n_neighbors,
        alpha=info["alpha"], epochs=epochs, ae_epochs=ae_epochs, n_rounds=n_rounds,
        batch_size=batch_size, hidden_dim=hidden_dim, graph_neighbors=graph_neighbors,
        reliability_folds=reliability_folds, lr=lr, weight_decay=weight_decay,
        max_cells_per_epoch=max_cells_per_epoch,
        case_sensitive=case_sensitive, gene_embeddings=gene_embeddings is not None,
        seed=info["seed"], rng=rng, device=str(info["device"]),
        spatial_scale=info["spatial_scale"], reference_scale=info["reference_scale"])}
    return scores
