"""stImpute inputs: gene-name matching, the paper's normalisation, column selection, batches.

Zeng et al. 2024, Commun Biol 7:1271, §Methods "Data preprocessing": raw counts are
divided by the cell total, scaled by the median total and log1p-transformed; spatial and
reference cells are then compared on the genes they share. :class:`CellData` holds the
normalised matrices of one fit (or one prediction) and serves the mini-batches: spatial
rows, the ``(batch, genes, k)`` neighbour features and the gene-graph adjacency.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import anndata as ad
import numpy as np
from scipy import sparse

from .._utils import (
    check_not_empty,
    check_unique_var_names,
    describe_source,
    get_matrix,
    is_backed,
    iter_batches,
    iter_row_blocks,
    log_normalize,
    resolve_input_scale,
    row_sums,
    to_dense,
)

# elements of one densified (cells × genes × k) feature block; bounds memory per batch
BLOCK_ELEMENTS = 2**23
DENSE_REF_ELEMENTS = 2**26


# ----------------------------------------------------------------------------- names
def fold(name: str, case_sensitive: bool) -> str:
    """``name`` as compared: itself, or upper-cased when matching ignores case."""
    return name if case_sensitive else name.upper()


def name_index(names: Sequence[str], case_sensitive: bool, what: str) -> dict[str, int]:
    """Map (case-folded) name → position; refuse names that collide after folding.

    Raises
    ------
    ValueError
        If two names match each other (exactly, or ignoring case when asked).
    """
    out: dict[str, int] = {}
    for i, n in enumerate(names):
        k = fold(str(n), case_sensitive)
        if k in out:
            raise ValueError(
                f"{what} has two names that match {k!r} when compared "
                f"{'exactly' if case_sensitive else 'case-insensitively'} "
                f"({names[out[k]]!r} and {n!r}); make them unique first."
            )
        out[k] = i
    return out


def _how(case_sensitive: bool) -> str:
    return "exactly" if case_sensitive else "ignoring case"


@dataclasses.dataclass
class Matched:
    """The gene names of a spatial and a reference AnnData, matched (see :func:`match_genes`)."""

    sp_names: list[str]
    ref_names: list[str]
    sp_idx: dict[str, int]
    ref_idx: dict[str, int]
    shared: list[str]  # spatial spelling, spatial order
    case_sensitive: bool
    case_hint: str  # "" or a sentence about names that differ only in case

    def key(self, g: str) -> str:
        return fold(g, self.case_sensitive)

    def ref_name(self, g: str) -> str:
        """The reference spelling of (spatial or reference) gene ``g``."""
        return self.ref_names[self.ref_idx[self.key(g)]]


def _case_hint(sp_names: list[str], ref_names: list[str], n_exact: int) -> str:
    """A sentence when more genes would match ignoring case than match exactly."""
    ref_up = {n.upper() for n in ref_names}
    n_fold = sum(g.upper() in ref_up for g in sp_names)
    if n_fold <= n_exact:
        return ""
    ref_exact = set(ref_names)
    by_up = {n.upper(): n for n in ref_names}
    ex = next((g, by_up[g.upper()]) for g in sp_names if g not in ref_exact and g.upper() in by_up)
    return (
        f"Only {n_exact} of the {len(sp_names)} spatial genes match the reference's "
        f"var_names exactly, but {n_fold} match ignoring case (e.g. {ex[0]!r} vs "
        f"{ex[1]!r}); pass case_sensitive=False to match them."
    )


def match_genes(adata_sp: ad.AnnData, adata_ref: ad.AnnData, case_sensitive: bool) -> Matched:
    """Match the two AnnData's ``var_names``; warn when case alone hides matches.

    Raises
    ------
    ValueError
        If names repeat (after case folding when ``case_sensitive=False``).
    """
    sp_names = [str(g) for g in adata_sp.var_names]
    ref_names = [str(g) for g in adata_ref.var_names]
    sp_idx = name_index(sp_names, case_sensitive, "adata_sp.var_names")
    ref_idx = name_index(ref_names, case_sensitive, "adata_ref.var_names")
    shared = [g for g in sp_names if fold(g, case_sensitive) in ref_idx]
    hint = _case_hint(sp_names, ref_names, len(shared)) if case_sensitive else ""
    return Matched(sp_names, ref_names, sp_idx, ref_idx, shared, case_sensitive, hint)


def warn_case(m: Matched) -> None:
    """Warn (once per call of a public function) when case alone hides shared genes."""
    if m.case_hint:
        warnings.warn(m.case_hint, UserWarning, stacklevel=4)


def select_genes(m: Matched, genes, min_train: int) -> tuple[list[str], list[str]]:
    """``(train genes (spatial spelling), target genes (reference spelling))``.

    Raises
    ------
    KeyError
        If ``genes`` names genes absent from the reference.
    ValueError
        If ``genes`` repeat, fewer than ``min_train`` shared genes remain to train on
        (the count, the matching mode and a case hint are given), or nothing is left to predict.
    """
    how = _how(m.case_sensitive)
    if genes is None:
        targets = [g for g in m.ref_names if m.key(g) not in m.sp_idx]
        held: set[str] = set()
    else:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        unknown = [g for g in genes if m.key(g) not in m.ref_idx]
        if unknown:
            raise KeyError(
                f"{len(unknown)} of the {len(genes)} requested gene(s) are not in "
                f"adata_ref.var_names (matched {how}), e.g. {unknown[:5]}. "
                "Pass genes measured by the reference."
            )
        if len({m.key(g) for g in genes}) != len(genes):
            raise ValueError("`genes` has duplicates.")
        targets = [m.ref_name(g) for g in genes]
        held = {m.key(g) for g in genes}
    train = [g for g in m.shared if m.key(g) not in held]
    if len(train) < min_train:
        raise ValueError(
            f"Found {len(m.shared)} gene(s) shared by adata_sp.var_names and "
            f"adata_ref.var_names (matched {how}); after holding out the requested "
            f"genes {len(train)} remain to train on, but at least {min_train} are "
            "needed. Check that both use the same gene naming (symbols vs ids, "
            "case: try case_sensitive=False). " + m.case_hint
        )
    if not targets:
        raise ValueError(
            "No genes to predict: every reference gene is measured in adata_sp. "
            "Pass genes=[...] naming reference genes to predict."
        )
    return train, targets


# ----------------------------------------------------------------------------- matrices
def check_anndata(adata, what: str) -> None:
    """Refuse a non-AnnData, duplicate ``var_names`` or an empty matrix."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}.")
    check_unique_var_names(adata)
    check_not_empty(adata, what=what)


def normalised(adata: ad.AnnData, layer: str | None, what: str):
    """The paper's normalisation: raw counts → total / median total, log1p; else as given.

    The scale is decided by :func:`sctorch._utils.resolve_input_scale` (``"auto"``):
    integer values are raw counts, anything else is used as given (assumed log1p of
    normalised values, or continuous imaging intensities). A backed matrix
    (``anndata.read_h5ad(path, backed="r")``) is not loaded: the result is then a function
    ``columns -> matrix`` that reads it by blocks of cells (:func:`section_columns`).

    Returns
    -------
    ``(matrix or reader, description)``; the user's matrix is never modified.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        If the values are non-finite or negative.
    """
    X = get_matrix(adata, layer)
    scale = resolve_input_scale(X, "auto", what=f"{what} ({describe_source(layer)})")
    desc = (
        "raw counts, normalised here (median total, log1p)"
        if scale == "counts"
        else "non-integer, used as given (assumed normalised and log1p-transformed)"
    )
    if is_backed(X):
        lib = row_sums(X) if scale == "counts" else None
        return (lambda pos: _backed_columns(X, pos, lib)), desc
    if scale == "counts":
        # the median over cells with counts, given explicitly: Scanpy's own median differs
        # between sparse and dense input when some cells have zero counts
        return log_normalize(X, target_sum=None), desc
    return X, desc


def _backed_columns(X, pos: np.ndarray, lib: np.ndarray | None):
    """Columns ``pos`` (``-1``: zeros) of a backed matrix, normalised, read by cell blocks.

    Counts are scaled per block with the median total of the whole section (``lib``), so
    the values equal those of the in-memory path (each row is scaled by its own total).
    """
    target = None
    if lib is not None:
        target = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
    blocks = []
    for _, block in iter_row_blocks(X, 8192):
        if target is not None:
            block = log_normalize(block, target_sum=target)
        blocks.append(columns_padded(block, pos))
    if not blocks:
        return np.zeros((0, len(pos)), np.float32)
    return sparse.vstack(blocks).tocsr() if sparse.issparse(blocks[0]) else np.vstack(blocks)


def section_columns(adata: ad.AnnData, layer: str | None, pos: np.ndarray, what: str):
    """Normalised columns ``pos`` (``-1``: zeros) of a section, in memory or backed."""
    X, _ = normalised(adata, layer, what)
    return columns_padded(X, pos)


def columns(X, idx: np.ndarray):
    """Columns ``idx`` of ``X`` as a CSR matrix (if sparse) or a float32 array.

    ``X`` may be the column reader :func:`normalised` returns for a backed matrix.
    """
    if callable(X):
        return X(idx)
    if sparse.issparse(X):
        return sparse.csr_matrix(X)[:, idx].astype(np.float32)
    return np.ascontiguousarray(np.asarray(X)[:, idx], dtype=np.float32)


def columns_padded(X, pos: np.ndarray):
    """Columns ``pos`` of ``X``; ``-1`` gives a column of zeros (a gene not measured)."""
    if (pos >= 0).all():
        return columns(X, pos)
    out = columns(X, np.where(pos >= 0, pos, 0))
    if sparse.issparse(out):
        out = (out @ sparse.diags((pos >= 0).astype(np.float32))).tocsr()
        out.eliminate_zeros()
        return out.astype(np.float32)
    out[:, pos < 0] = 0.0
    return out


@dataclasses.dataclass
class Inputs:
    """The matrices of one stImpute fit.

    ``sp``: ``(n_sp, n_train)`` spatial values of the training genes; ``ref``:
    ``(n_ref, n_train + n_targets)`` reference values of the training genes, then the
    targets (both normalised, dense float32 or CSR).
    """

    sp: Any
    ref: Any
    train: list[str]  # spatial spelling
    train_ref: list[str]  # reference spelling
    targets: list[str]  # reference spelling
    info: dict[str, Any]


def check_neighbors(n_neighbors, n_ref: int, alpha) -> None:
    """Refuse ``n_neighbors`` outside ``[1, n_ref]`` and ``alpha`` outside ``[0, 1]``.

    ``n_neighbors=None`` (chosen at fit) needs at least 2 reference cells.
    """
    if n_neighbors is None:
        if n_ref < 2:
            raise ValueError(f"adata_ref has {n_ref} cell(s); at least 2 are needed.")
    elif not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
    elif n_ref < n_neighbors:
        raise ValueError(
            f"adata_ref has {n_ref} cells but n_neighbors={n_neighbors} "
            "reference neighbours are needed per spatial cell; pass a smaller "
            "n_neighbors or a larger reference."
        )
    if alpha is not None and not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")


def prepare(m: Matched, train: list[str], targets: list[str], norm_sp, norm_ref) -> Inputs:
    """The training and target columns (from :func:`select_genes`) of the normalised matrices.

    ``norm_sp`` / ``norm_ref`` are :func:`normalised`'s results for the two AnnData.
    """
    (Xsp, sp_scale), (Xref, ref_scale) = norm_sp, norm_ref
    sp_cols = np.array([m.sp_idx[m.key(g)] for g in train])
    ref_train = np.array([m.ref_idx[m.key(g)] for g in train])
    ref_target = np.array([m.ref_idx[m.key(g)] for g in targets])
    info = {
        "spatial_scale": sp_scale,
        "reference_scale": ref_scale,
        "n_shared": len(m.shared),
        "n_train": len(train),
    }
    ref = columns(Xref, np.concatenate([ref_train, ref_target]))  # backed: read by blocks
    return Inputs(
        columns(Xsp, sp_cols), ref, train, [m.ref_names[i] for i in ref_train], targets, info
    )


# ----------------------------------------------------------------------------- batches
class CellData:
    """Tensors of one stImpute fit or prediction, served in bounded mini-batches.

    Parameters
    ----------
    sp
        ``(n_sp, n_train)`` normalised spatial values (CSR or array).
    ref
        ``(n_ref, n_all)`` normalised reference values, training genes first (CSR or
        array); kept on the device as one dense tensor unless it is sparse and holds more
        than 2**26 entries.
    n_train
        Number of training genes (the first columns of ``ref``).
    graph
        ``cols -> scipy CSR`` gene graph among reference columns ``cols`` (``None`` when
        no graph is used).
    n_neighbors, batch_size, max_cells_per_epoch
        ``k``, the largest mini-batch, and the cap on cells per training epoch.
    device
        Torch device of the tensors.
    seed
        Seed of the per-epoch cell shuffling (:meth:`epoch_cells`).
    weighted
        Use the graph's stored values as edge weights (the paper's row-normalised distance
        graph, summed); otherwise unit weights (mean over neighbours).
    """

    def __init__(
        self,
        sp,
        ref,
        n_train: int,
        graph: Callable[[np.ndarray], Any],
        *,
        n_neighbors: int,
        batch_size: int,
        max_cells_per_epoch: int | None,
        device,
        seed: int = 0,
        weighted: bool = False,
    ):
        import torch

        self.torch = torch
        self.sp = sp
        self.n_train = n_train
        self.n_all = ref.shape[1]
        self.n_ref = ref.shape[0]
        self.device = device
        self.k = n_neighbors
        self.max_batch = batch_size
        self.cap = max_cells_per_epoch
        self.rng = np.random.default_rng(seed)
        self._graph_fn = graph
        self.weighted = weighted
        if sparse.issparse(ref) and ref.shape[0] * ref.shape[1] > DENSE_REF_ELEMENTS:
            self.ref = sparse.csr_matrix(ref)
            self.ref_t = None
        else:
            self.ref = None
            self.ref_t = torch.as_tensor(to_dense(ref), device=device)
        self._adj: dict[bytes, Any] = {}
        self._graphs: dict[bytes, Any] = {}

    @property
    def n_sp(self) -> int:
        return self.sp.shape[0]

    def sp_rows(self, idx):
        """Spatial rows ``idx`` as a ``(len(idx), n_train)`` tensor."""
        return self.torch.as_tensor(to_dense(self.sp[idx]), device=self.device)

    def ref_rows(self, idx, cols: np.ndarray | None = None):
        """Reference rows (any shape of indices) → tensor ``idx.shape + (n_cols,)``."""
        flat = np.asarray(idx).ravel()
        if self.ref_t is not None:
            t = self.ref_t[self.torch.as_tensor(flat, device=self.device)]
            if cols is not None:
                t = t[:, self.torch.as_tensor(cols, device=self.device)]
        else:
            block = self.ref[flat]
            if cols is not None:
                block = block[:, cols]
            t = self.torch.as_tensor(to_dense(block), device=self.device)
        return t.reshape(*np.shape(idx), t.shape[-1])

    def features(self, cells, cols: np.ndarray, nbr: np.ndarray):
        """``(batch, len(cols), k)``: each gene's expression in the cell's k neighbours."""
        return self.ref_rows(nbr[cells], cols).transpose(1, 2)

    def batch_size(self, n_genes: int) -> int:
        """Cells per batch so that one ``(batch, n_genes, k)`` block stays bounded."""
        return max(1, min(self.max_batch, BLOCK_ELEMENTS // max(1, n_genes * self.k)))

    def graph(self, cols: np.ndarray):
        """The gene graph among reference columns ``cols`` (scipy CSR, cached)."""
        key = np.asarray(cols, np.int64).tobytes()
        if key not in self._graphs:
            self._graphs[key] = self._graph_fn(np.asarray(cols))
        return self._graphs[key]

    def adjacency(self, cols: np.ndarray):
        """The graph among ``cols`` as a torch CSR ``adj_t`` with unit weights (cached)."""
        key = np.asarray(cols, np.int64).tobytes()
        if key not in self._adj:
            self._adj[key] = self._to_torch(self.graph(cols))
        return self._adj[key]

    def _to_torch(self, A):
        torch = self.torch
        with warnings.catch_warnings():  # "sparse CSR support is in beta" and similar
            warnings.simplefilter("ignore", UserWarning)
            adj = torch.sparse_csr_tensor(
                torch.as_tensor(A.indptr, dtype=torch.int64),
                torch.as_tensor(A.indices, dtype=torch.int64),
                torch.as_tensor(A.data, dtype=torch.float32)
                if self.weighted
                else torch.ones(len(A.indices), dtype=torch.float32),
                size=A.shape,
            )
        return adj.to(self.device)

    def epoch_cells(self) -> np.ndarray:
        """The cells of one training epoch: all (shuffled) or a random subset (the cap)."""
        perm = self.rng.permutation(self.n_sp)
        return perm if self.cap is None or self.cap >= self.n_sp else perm[: self.cap]

    def epoch_batches(self, size: int):
        """``epoch -> iterator of cell-index arrays of at most size`` for :func:`~.models.fit`.

        Each epoch draws its cells (:meth:`epoch_cells`) when it starts.
        """

        def batches(_epoch: int):
            perm = self.epoch_cells()
            for sl in iter_batches(len(perm), size):
                yield perm[sl]

        return batches
