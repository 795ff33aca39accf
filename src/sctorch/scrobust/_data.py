"""scRobust data: vocabulary, cells as gene tokens, mini-batches, labels.

Park & Lee, Brief Bioinform 2024, 25(6):bbae586, §Methods. The input matrix (raw counts
by default) is log-normalised once (``log1p(x / library × 10⁴)``, as the authors' code)
and kept as CSR arrays (``indptr``, vocabulary ids, values). A mini-batch is a tensor of
row indices; its tokens are gathered from those arrays into padded ``(batch, length)``
index tensors, so the matrix is never densified. Nothing here imports torch at module
level, and nothing here trains.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import (
    check_unique_var_names,
    describe_source,
    get_matrix,
    log_normalize,
    resolve_input_scale,
)

if TYPE_CHECKING:
    import anndata as ad

#: special tokens of a vocabulary built from ``var_names``, at ids 0–4
SPECIAL_TOKENS = ("PAD", "SEP", "UNKNOWN", "CLS", "MASK")
#: ids that every vocabulary (built, or scRobust's ``whole_human_vocab.csv``) fixes
SPECIAL_IDS = {"PAD": 0, "SEP": 1, "CLS": 3}


# ============================================================================ vocabulary
def _read_vocab_file(path: Path) -> list[str]:
    """Tokens of an ``ID,SYMBOL`` CSV such as scRobust's ``whole_human_vocab.csv``."""
    df = pd.read_csv(path)
    if not {"ID", "SYMBOL"} <= set(df.columns):
        raise ValueError(f"{path}: a vocabulary file needs the columns 'ID' and 'SYMBOL' "
                         f"(found {list(df.columns)}).")
    df = df.sort_values("ID")
    ids = df["ID"].to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{path}: vocabulary IDs must be 0, 1, …, n-1 without gaps.")
    tokens = df["SYMBOL"].astype(str).tolist()
    head = [t.upper() for t in tokens[:4]]
    if head[0] != "PAD" or head[3] != "CLS":
        raise ValueError(f"{path}: IDs 0–3 must be the special tokens PAD, SEP, UNKNOWN, CLS "
                         f"(found {tokens[:4]}).")
    return tokens


def _build_vocab(vocab, var_names: pd.Index) -> list[str]:
    """The token list: special tokens, then ``vocab`` (a file, a gene list) or ``var_names``.

    Raises
    ------
    FileNotFoundError
        If ``vocab`` is a path that does not exist.
    ValueError
        If the file is malformed or a gene list holds duplicates.
    """
    if vocab is None:
        return list(SPECIAL_TOKENS) + [str(g) for g in var_names]
    if isinstance(vocab, str | Path):
        p = Path(vocab)
        if not p.exists():
            raise FileNotFoundError(f"Vocabulary file {p} not found. Pass vocab=None to build "
                                    "the vocabulary from adata.var_names.")
        return _read_vocab_file(p)
    genes = [str(g) for g in vocab]
    if len(set(genes)) != len(genes):
        raise ValueError("vocab= holds duplicate gene names.")
    return list(SPECIAL_TOKENS) + [g for g in genes if g not in SPECIAL_TOKENS]


def check_special_tokens(vocab: Sequence[str]) -> None:
    """Raise ``ValueError`` unless PAD, SEP and CLS sit at ids 0, 1 and 3 (once each)."""
    upper = [str(t).upper() for t in vocab]
    for tok, i in SPECIAL_IDS.items():
        at = [j for j, t in enumerate(upper) if t == tok]
        if at != [i]:
            raise ValueError(f"the vocabulary has the special token {tok} at id(s) {at[:5]}, "
                             f"expected exactly at id {i}; the vocabulary does not match the "
                             "trained token embeddings (was it reordered?).")


# ============================================================================ data → tokens
class _Tokens:
    """Log-normalised expression restricted to vocabulary genes, as CSR arrays.

    ``X`` is cells × (genes in the vocabulary), float32 CSR with sorted indices;
    ``var_ids`` the vocabulary id of each column; ``input_scale`` the scale the input was
    found to have (``"counts"`` or ``"log1p"``).
    """

    def __init__(self, X: sparse.csr_matrix, var_ids: np.ndarray, n_missing: int,
                 input_scale: str = "counts"):
        self.X = X
        self.var_ids = var_ids
        self.n_missing = n_missing
        self.input_scale = input_scale
        self.indptr = X.indptr.astype(np.int64)
        self.ids = var_ids[X.indices].astype(np.int64)
        self.vals = X.data.astype(np.float32)

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    def detection(self, vocab_size: int) -> np.ndarray:
        """Fraction of cells detecting each vocabulary token (NaN: not in the data)."""
        out = np.full(vocab_size, np.nan)
        nnz = np.bincount(self.X.indices, minlength=self.X.shape[1])
        out[self.var_ids] = nnz / max(self.n_obs, 1)
        return out


def _prepare(adata: ad.AnnData, model_ids, *, layer: str | None, input_scale: str,
             min_shared_genes: int, what: str = "adata") -> _Tokens:
    """Validate an AnnData and map it to vocabulary tokens (nothing is written).

    The input scale is decided by :func:`sctorch._utils.resolve_input_scale`: ``"counts"``
    (finite non-negative integers, then log-normalised to 10⁴ per cell), ``"log1p"``
    (log-normalised values; integer counts and values above 30 are refused) or ``"auto"``.
    ``model_ids`` maps gene names to vocabulary ids (``-1``: not in the vocabulary).

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        For duplicated ``var_names``, an empty AnnData, input that does not hold the
        declared scale, fewer than ``min_shared_genes`` vocabulary genes, cells with zero
        counts or without a non-zero vocabulary gene.
    """
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    src = describe_source(layer).replace("adata", what)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{what} is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    scale = resolve_input_scale(X, input_scale, what=src)
    var_ids = model_ids(adata.var_names)
    keep = np.flatnonzero(var_ids >= 0)
    n_missing = adata.n_vars - keep.size
    if keep.size < min_shared_genes:
        raise ValueError(f"{what} shares only {keep.size} of its {adata.n_vars} genes "
                         f"(matched on var_names) with the model vocabulary; at least "
                         f"{min_shared_genes} are needed. Use gene symbols as var_names, or a "
                         "model trained on these genes.")
    if n_missing:
        warnings.warn(f"{n_missing} of {adata.n_vars} genes of {what} are not in the model "
                      "vocabulary and are skipped.", UserWarning, stacklevel=3)
    Xs = sparse.csr_matrix(X) if not sparse.issparse(X) else X.tocsr()
    if scale == "counts":
        lib = np.asarray(Xs.sum(axis=1)).ravel()
        if (lib <= 0).any():
            raise ValueError(f"{int((lib <= 0).sum())} cell(s) of {src} have zero total counts;"
                             " remove them first (scanpy.pp.filter_cells(adata, min_counts=1)).")
        Xs = sparse.csr_matrix(log_normalize(Xs, target_sum=1e4))
    Xs = Xs[:, keep].tocsr()
    Xs.eliminate_zeros()
    Xs.sort_indices()
    empty = np.flatnonzero(np.diff(Xs.indptr) == 0)
    if empty.size:
        ex = adata.obs_names[empty[:3]].tolist()
        raise ValueError(f"{empty.size} cell(s) of {what} (e.g. {ex}) have no non-zero "
                         "expression in genes of the model vocabulary; remove them first "
                         "(scanpy.pp.filter_cells(adata, min_genes=1)).")
    return _Tokens(Xs.astype(np.float32), var_ids[keep], n_missing, scale)


class _Batcher:
    """Builds padded token tensors for a batch of cells from the CSR arrays."""

    def __init__(self, tok: _Tokens, *, pad_id: int, cls_id: int, device):
        import torch

        self.indptr = torch.from_numpy(tok.indptr)
        self.ids = torch.from_numpy(tok.ids)
        self.vals = torch.from_numpy(tok.vals)
        self.pad_id, self.cls_id, self.device = pad_id, cls_id, device

    def select(self, rows, n: int, *, rank=None, generator=None, cls: bool = True):
        """Up to ``n`` non-zero genes of each cell in ``rows``.

        Random subsets (without replacement, from ``generator``) when ``rank`` is None,
        else the ``n`` genes of lowest ``rank`` (a per-token priority). Returns
        ``(ids, scales, pad)``, each ``(len(rows), length)``; with ``cls`` position 0 is
        the CLS token with scale 1.
        """
        import torch

        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        width = int(length.max())
        ar = torch.arange(width)
        valid = ar[None, :] < length[:, None]
        pos = torch.where(valid, start[:, None] + ar[None, :], start[:, None])
        if rank is None:
            key = torch.rand(pos.shape, generator=generator)
        else:
            key = rank[self.ids[pos]].to(torch.float64)
        key = key.masked_fill(~valid, math.inf)
        k = min(n, width)
        sel = torch.topk(key, k, dim=1, largest=False, sorted=True).indices
        p, ok = pos.gather(1, sel), valid.gather(1, sel)
        ids = torch.where(ok, self.ids[p], self.pad_id)
        vals = torch.where(ok, self.vals[p], 0.0)
        pad = ~ok
        if cls:
            b = ids.shape[0]
            ids = torch.cat([torch.full((b, 1), self.cls_id, dtype=ids.dtype), ids], 1)
            vals = torch.cat([torch.ones(b, 1, dtype=vals.dtype), vals], 1)
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), pad], 1)
        return ids.to(self.device), vals.to(self.device), pad.to(self.device)


def _unique_rank(detection: np.ndarray):
    """Priority of each token for "highly unique genes": rarest detection first (eq. 12)."""
    import torch

    det = np.where(np.isnan(detection), np.inf, detection)
    order = np.lexsort((np.arange(det.size), det))  # by detection, ties by id
    rank = np.empty(det.size, dtype=np.float64)
    rank[order] = np.arange(det.size)
    return torch.from_numpy(rank)


# ============================================================================ labels, checks
def _check_labels(adata: ad.AnnData, labels_key: str | None) -> pd.Series:
    """The reference labels as strings; refuses a missing key, NaN or a single class."""
    if labels_key is None:
        raise ValueError("labels_key= is required with adata_ref: name the obs column that "
                         "holds the reference cell types.")
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key {labels_key!r} not found in adata_ref.obs (columns: "
                       f"{list(adata.obs.columns)}).")
    return _label_series(adata.obs[labels_key], f"adata_ref.obs[{labels_key!r}]")


def _label_series(labels, what: str = "labels") -> pd.Series:
    labels = pd.Series(labels).reset_index(drop=True)
    if labels.isna().any():
        raise ValueError(f"{what} has {int(labels.isna().sum())} missing "
                         "(NaN) label(s); remove those cells or fill the labels.")
    if labels.astype(str).nunique() < 2:
        raise ValueError(f"{what} has a single class "
                         f"({labels.astype(str).iloc[0]!r}); a classifier needs at least 2.")
    return labels.astype(str)


def _class_weights(labels: pd.Series, class_weight) -> np.ndarray | None:
    """Cross-entropy weight per class (classes in sorted order), or None.

    ``"balanced"``: ``n / (n_classes × n_c)`` as scikit-learn; a mapping gives one weight
    per label; ``None``: unweighted.
    """
    if class_weight is None:
        return None
    classes = sorted(labels.unique())
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', a mapping or None, got "
                             f"{class_weight!r}.")
        counts = labels.value_counts().reindex(classes).to_numpy(dtype=np.float64)
        return len(labels) / (len(classes) * counts)
    if not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be 'balanced', a mapping or None, got "
                         f"{class_weight!r}.")
    missing = [c for c in classes if c not in class_weight]
    if missing:
        raise ValueError(f"class_weight has no weight for {len(missing)} reference label(s), "
                         f"e.g. {missing[:3]}; give one for every label.")
    w = np.array([float(class_weight[c]) for c in classes])
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("class_weight values must be finite and > 0.")
    return w


def _check_positive(**kwargs) -> None:
    """Raise ``ValueError`` for a given (not None) argument that is not a positive number."""
    for name, val in kwargs.items():
        if val is not None and not (isinstance(val, int | float | np.number) and val > 0):
            raise ValueError(f"{name} must be a positive number, got {val!r}.")
