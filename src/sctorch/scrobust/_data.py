"""scRobust data: vocabulary, cells as gene tokens, mini-batches, labels.

Park & Lee, Brief Bioinform 2024, 25(6):bbae586, §Methods. The input matrix (raw counts
by default) is log-normalised once (``log1p(x / library × 10⁴)``, as the authors' code)
and kept as CSR arrays (``indptr``, vocabulary ids, values). A mini-batch is a tensor of
row indices; its tokens are gathered from those arrays into padded ``(batch, length)``
index tensors, so the matrix is never densified. Nothing here imports torch at module
level, and nothing here trains.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
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
        raise ValueError(
            f"{path}: a vocabulary file needs the columns 'ID' and 'SYMBOL' "
            f"(found {list(df.columns)})."
        )
    df = df.sort_values("ID")
    ids = df["ID"].to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{path}: vocabulary IDs must be 0, 1, …, n-1 without gaps.")
    tokens = df["SYMBOL"].astype(str).tolist()
    head = [t.upper() for t in tokens[:4]]
    if head[0] != "PAD" or head[3] != "CLS":
        raise ValueError(
            f"{path}: IDs 0–3 must be the special tokens PAD, SEP, UNKNOWN, CLS "
            f"(found {tokens[:4]})."
        )
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
            raise FileNotFoundError(
                f"Vocabulary file {p} not found. Pass vocab=None to build "
                "the vocabulary from adata.var_names."
            )
        return _read_vocab_file(p)
    genes = [str(g) for g in vocab]
    if len(set(genes)) != len(genes):
        raise ValueError("vocab= holds duplicate gene names.")
    return list(SPECIAL_TOKENS) + [g for g in genes if g not in SPECIAL_TOKENS]


def vocab_digest(vocab: Sequence[str]) -> str:
    """SHA-256 of a vocabulary in id order (stored with a model; checked on load)."""
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()


def check_special_tokens(vocab: Sequence[str]) -> None:
    """Raise ``ValueError`` unless PAD, SEP and CLS sit at ids 0, 1 and 3 (once each)."""
    upper = [str(t).upper() for t in vocab]
    for tok, i in SPECIAL_IDS.items():
        at = [j for j, t in enumerate(upper) if t == tok]
        if at != [i]:
            raise ValueError(
                f"the vocabulary has the special token {tok} at id(s) {at[:5]}, "
                f"expected exactly at id {i}; the vocabulary does not match the "
                "trained token embeddings (was it reordered?)."
            )


# ============================================================================ data → tokens
class _Tokens:
    """Expression restricted to vocabulary genes, as CSR arrays.

    ``X`` is cells × (genes in the vocabulary), float32 CSR with sorted indices, holding
    log-normalised values; ``var_ids`` the vocabulary id of each column; ``input_scale``
    the scale the input was found to have (``"counts"`` or ``"log1p"``); ``counts`` the raw
    counts aligned with ``X.data`` (``None`` for log1p input: such views cannot be thinned).
    :meth:`values` gives the token values of a mode (``"log1p"`` or ``"rank"``).
    """

    def __init__(
        self,
        X: sparse.csr_matrix,
        var_ids: np.ndarray,
        n_missing: int,
        input_scale: str = "counts",
        counts: np.ndarray | None = None,
    ):
        self.X = X
        self.var_ids = var_ids
        self.n_missing = n_missing
        self.input_scale = input_scale
        self.indptr = X.indptr.astype(np.int64)
        self.ids = var_ids[X.indices].astype(np.int64)
        self.vals = X.data.astype(np.float32)
        self.counts = None if counts is None else np.asarray(counts, dtype=np.float32)
        self._values: dict[str, np.ndarray] = {"log1p": self.vals}

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    def values(self, mode: str) -> np.ndarray:
        """Token values: ``"log1p"`` (log-normalised) or ``"rank"`` (:func:`rank_values`)."""
        if mode not in self._values:
            if mode != "rank":
                raise ValueError(f"token_values must be 'log1p' or 'rank', got {mode!r}.")
            self._values[mode] = rank_values(self.indptr, self.vals)
        return self._values[mode]

    def subset(self, rows: np.ndarray) -> _Tokens:
        """The tokens of cells ``rows`` (a new object)."""
        X = self.X[rows]
        counts = None
        if self.counts is not None:
            c = sparse.csr_matrix((self.counts, self.X.indices, self.X.indptr), shape=self.X.shape)
            counts = c[rows].data
        return _Tokens(X, self.var_ids, self.n_missing, self.input_scale, counts)

    @property
    def has_counts(self) -> bool:
        """Whether raw counts are kept (views can be thinned)."""
        return self.counts is not None

    def load(self) -> _Tokens:
        """These tokens (already in memory; see :class:`._disk.DiskTokens`)."""
        return self

    @staticmethod
    def concat(parts: Sequence[_Tokens]) -> _Tokens:
        """Row blocks prepared alike (same genes, scale) stacked into one."""
        X = sparse.vstack([t.X for t in parts], format="csr")
        counts = None if parts[0].counts is None else np.concatenate([t.counts for t in parts])
        first = parts[0]
        return _Tokens(X, first.var_ids, first.n_missing, first.input_scale, counts)

    def detection(self, vocab_size: int) -> np.ndarray:
        """Fraction of cells detecting each vocabulary token (NaN: not in the data)."""
        out = np.full(vocab_size, np.nan)
        nnz = np.bincount(self.X.indices, minlength=self.X.shape[1])
        out[self.var_ids] = nnz / max(self.n_obs, 1)
        return out


def rank_values(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Depth-invariant token values: ``1 + (lo + hi) / (2 n)`` from within-cell ranks.

    For each cell (a CSR row of ``n`` non-zero values) a value's rank is the middle of the
    positions ``[lo, hi)`` its ties take in the cell's sorted values, so values lie in
    ``(1, 2)``: 1.5 for the median (and for a cell whose values are all tied), near 2 for
    the cell's highest gene. A Geneformer-style rank code, kept ≥ 1 so that every token
    keeps its gene vector (eq. 2 scales it). Monotone transforms of a cell's values (its
    library size, log1p) leave it unchanged.
    """
    n = np.diff(indptr)
    rows = np.repeat(np.arange(n.size), n)
    order = np.lexsort((data, rows))
    r, v = rows[order], data[order]
    new = np.ones(v.size, dtype=bool)
    new[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], v.size)
    group = np.cumsum(new) - 1
    pos0 = indptr[:-1][r]
    lo = starts[group] - pos0
    hi = ends[group] - pos0
    out = np.empty(data.size, dtype=np.float32)
    out[order] = 1.0 + (lo + hi) / (2.0 * n[r])
    return out


def thin_counts(
    counts: np.ndarray,
    indptr: np.ndarray,
    rate_range: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Binomially thinned counts: each cell keeps each molecule with its own random rate.

    The rate of each cell is uniform in ``rate_range``; a cell left without molecules keeps
    its original counts (so that every cell stays encodable).
    """
    n = np.diff(indptr)
    rate = rng.uniform(*rate_range, size=n.size)
    out = rng.binomial(counts.astype(np.int64), np.repeat(rate, n)).astype(np.float32)
    lib = np.add.reduceat(out, indptr[:-1]) if out.size else out
    empty = np.flatnonzero((lib <= 0) & (n > 0))
    for i in empty:
        out[indptr[i] : indptr[i + 1]] = counts[indptr[i] : indptr[i + 1]]
    return out


def thinned_tokens(
    tok: _Tokens, rate_range: tuple[float, float], rng: np.random.Generator
) -> _Tokens:
    """A binomially thinned copy of ``tok`` (counts input only), re-log-normalised."""
    if tok.counts is None:
        raise ValueError("thinning needs raw counts (input_scale='counts').")
    c = sparse.csr_matrix(
        (thin_counts(tok.counts, tok.indptr, rate_range, rng), tok.X.indices, tok.X.indptr),
        shape=tok.X.shape,
    )
    c.eliminate_zeros()
    L = sparse.csr_matrix(log_normalize(c, target_sum=1e4)).astype(np.float32)
    L.sort_indices()
    return _Tokens(L, tok.var_ids, tok.n_missing, tok.input_scale, c.data)


#: rows read at a time from a backed matrix when preparing or scanning it
BLOCK_ROWS = 2048


def _prepare(
    adata: ad.AnnData,
    model_ids,
    *,
    layer: str | None,
    input_scale: str,
    min_shared_genes: int,
    what: str = "adata",
) -> _Tokens:
    """Validate an AnnData and map it to vocabulary tokens (nothing is written).

    The input scale is decided by :func:`sctorch._utils.resolve_input_scale`: ``"counts"``
    (finite non-negative integers, then log-normalised to 10⁴ per cell), ``"log1p"``
    (log-normalised values; integer counts and values above 30 are refused) or ``"auto"``.
    ``model_ids`` maps gene names to vocabulary ids (``-1``: not in the vocabulary). A
    backed matrix (``anndata.read_h5ad(path, backed="r")``) is read 2,048 rows at a time
    and kept as tokens of its vocabulary genes only (sparse, never densified).

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        For duplicated ``var_names``, an empty AnnData, input that does not hold the
        declared scale, fewer than ``min_shared_genes`` vocabulary genes, cells with zero
        counts or without a non-zero vocabulary gene.
    """
    X, shared = _validate(
        adata,
        model_ids,
        layer=layer,
        input_scale=input_scale,
        min_shared_genes=min_shared_genes,
        what=what,
    )
    blocks = iter_row_blocks(X, BLOCK_ROWS) if is_backed(X) else [(slice(0, adata.n_obs), X)]
    parts = [block_tokens(b, sl, shared) for sl, b in blocks]
    return parts[0] if len(parts) == 1 else _Tokens.concat(parts)


class _Shared:
    """What maps a block of an AnnData's rows to tokens: genes kept, their ids, the scale."""

    def __init__(self, adata, keep, var_ids, scale: str, src: str, what: str):
        self.obs_names, self.keep, self.var_ids = adata.obs_names, keep, var_ids[keep]
        self.n_missing, self.scale = adata.n_vars - keep.size, scale
        self.src, self.what = src, what


def _case_hint(names, model_ids, n_exact: int) -> str:
    """A sentence when the vocabulary would match more genes with their names re-cased."""
    names = pd.Index(names).astype(str)
    best = None
    for label, method in (
        ("upper-cased", "upper"),
        ("capitalised", "capitalize"),
        ("lower-cased", "lower"),
    ):
        recase = getattr(names.str, method)()
        n = int((np.asarray(model_ids(recase)) >= 0).sum())
        if n > n_exact and (best is None or n > best[1]):
            best = (label, n, recase, method)
    if best is None:
        return ""
    label, n, recase, method = best
    ex = next((a, b) for a, b in zip(names, recase, strict=True) if a != b)
    return (
        f" The vocabulary matches names case-sensitively: {n} genes match with var_names "
        f"{label} (e.g. {ex[0]!r} -> {ex[1]!r}); rename them first, e.g. "
        f"adata.var_names = adata.var_names.str.{method}()."
    )


def _validate(
    adata: ad.AnnData,
    model_ids,
    *,
    layer: str | None,
    input_scale: str,
    min_shared_genes: int,
    what: str = "adata",
):
    """``(matrix, shared)``: the checks of :func:`_prepare` that need no pass over cells."""
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    src = describe_source(layer).replace("adata", what)
    check_not_empty(adata, what=what)
    scale = resolve_input_scale(X, input_scale, what=src)
    var_ids = model_ids(adata.var_names)
    keep = np.flatnonzero(var_ids >= 0)
    if keep.size < min_shared_genes:
        raise ValueError(
            f"{what} shares only {keep.size} of its {adata.n_vars} genes "
            f"(matched on var_names) with the model vocabulary; at least "
            f"{min_shared_genes} are needed. Use gene symbols as var_names, or a "
            f"model trained on these genes.{_case_hint(adata.var_names, model_ids, keep.size)}"
        )
    shared = _Shared(adata, keep, var_ids, scale, src, what)
    if shared.n_missing:
        warnings.warn(
            f"{shared.n_missing} of {adata.n_vars} genes of {what} are not in the "
            "model vocabulary and are skipped.",
            UserWarning,
            stacklevel=4,
        )
    return X, shared


def block_tokens(block, rows: slice | np.ndarray, shared: _Shared) -> _Tokens:
    """Tokens of an in-memory block of the rows ``rows`` (checked: libraries, empty cells)."""
    Xs = sparse.csr_matrix(block) if not sparse.issparse(block) else block.tocsr()
    counts = None
    if shared.scale == "counts":
        lib = np.asarray(Xs.sum(axis=1)).ravel()
        if (lib <= 0).any():
            raise ValueError(
                f"{int((lib <= 0).sum())} cell(s) of {shared.src} have zero total"
                " counts; remove them first (scanpy.pp.filter_cells(adata, "
                "min_counts=1))."
            )
        C = Xs[:, shared.keep].tocsr()
        C.eliminate_zeros()
        C.sort_indices()
        counts = C.data
        Xs = sparse.csr_matrix(log_normalize(Xs, target_sum=1e4))
    Xs = Xs[:, shared.keep].tocsr()
    Xs.eliminate_zeros()
    Xs.sort_indices()
    empty = np.flatnonzero(np.diff(Xs.indptr) == 0)
    if empty.size:
        ex = shared.obs_names[rows][empty[:3]].tolist()
        raise ValueError(
            f"{empty.size} cell(s) of {shared.what} (e.g. {ex}) have no non-zero "
            "expression in genes of the model vocabulary; remove them first "
            "(scanpy.pp.filter_cells(adata, min_genes=1))."
        )
    return _Tokens(Xs.astype(np.float32), shared.var_ids, shared.n_missing, shared.scale, counts)


def is_backed_input(adata, layer: str | None) -> bool:
    """Whether ``adata`` (an AnnData, not tokens) holds its matrix on disk (backed mode)."""
    return (
        not isinstance(adata, _Tokens)
        and hasattr(adata, "isbacked")
        and is_backed(get_matrix(adata, layer))
    )


class _Batcher:
    """Builds padded token tensors for a batch of cells from the CSR arrays.

    ``values`` is the token-value mode (``"log1p"`` or ``"rank"``, see :meth:`_Tokens.values`).
    """

    def __init__(self, tok: _Tokens, *, pad_id: int, cls_id: int, device, values: str = "log1p"):
        import torch

        self.indptr = torch.from_numpy(tok.indptr)
        self.ids = torch.from_numpy(tok.ids)
        self.vals = torch.from_numpy(tok.values(values))
        self.counts = None if tok.counts is None else torch.from_numpy(tok.counts)
        self.mode = values
        self.pad_id, self.cls_id, self.device = pad_id, cls_id, device

    @property
    def n_obs(self) -> int:
        return self.indptr.numel() - 1

    def _positions(self, rows):
        """Each row's stored-value positions, padded to the longest row.

        Returns ``(pos, valid, ar)``: positions, the mask of real ones, ``arange(width)``.
        """
        import torch

        start = self.indptr[rows]
        length = self.indptr[rows + 1] - start
        ar = torch.arange(int(length.max()))
        valid = ar[None, :] < length[:, None]
        return torch.where(valid, start[:, None] + ar[None, :], start[:, None]), valid, ar

    def select_thinned(self, rows, n: int, rate_range: tuple[float, float], *, generator):
        """As :meth:`select` (random genes), from binomially thinned counts of each cell.

        Each cell keeps each of its molecules with a rate drawn uniformly from
        ``rate_range`` (one rate per cell and call, so two views of a cell differ in depth);
        token values are computed from the thinned counts (log-normalised over the
        vocabulary genes, or within-cell ranks). A cell that loses every molecule keeps its
        original counts. Needs counts input.
        """
        import torch

        pos, valid, ar = self._positions(rows)
        width = ar.numel()
        c = torch.where(valid, self.counts[pos], 0.0)
        lo, hi = rate_range
        rate = lo + (hi - lo) * torch.rand(len(rows), 1, generator=generator, dtype=torch.float64)
        # numpy's binomial, seeded from the torch generator (torch.binomial gave weights that
        # differed in the last bits between runs of the same seed)
        nrng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        t = torch.from_numpy(
            nrng.binomial(c.numpy().astype(np.int64), rate.expand_as(c).numpy()).astype(np.float32)
        )
        none = t.sum(1) <= 0
        t = torch.where(none[:, None], c, t)
        ok = t > 0
        if self.mode == "rank":
            srt = torch.sort(torch.where(ok, t, torch.inf), dim=1).values.contiguous()
            lo_r = torch.searchsorted(srt, t.contiguous(), right=False)
            hi_r = torch.searchsorted(srt, t.contiguous(), right=True)
            nn_ = ok.sum(1, keepdim=True).clamp(min=1)
            v = 1.0 + (lo_r + hi_r).float() / (2.0 * nn_)
        else:
            v = torch.log1p(t / t.sum(1, keepdim=True).clamp(min=1) * 1e4)
        key = _last(torch.rand(pos.shape, generator=generator, dtype=torch.float64), ok, ar)
        k = min(n, width)
        sel = torch.topk(key, k, dim=1, largest=False, sorted=True).indices
        good = ok.gather(1, sel)
        ids = torch.where(good, self.ids[pos.gather(1, sel)], self.pad_id)
        vals = torch.where(good, v.gather(1, sel), 0.0).float()
        return self._finish(ids, vals, ~good, True)

    def select(self, rows, n: int, *, rank=None, generator=None, cls: bool = True):
        """Up to ``n`` non-zero genes of each cell in ``rows``.

        Random subsets (without replacement, from ``generator``) when ``rank`` is None,
        else the ``n`` genes of lowest ``rank`` (a per-token priority). Returns
        ``(ids, scales, pad)``, each ``(len(rows), length)``; with ``cls`` position 0 is
        the CLS token with scale 1.
        """
        import torch

        pos, valid, ar = self._positions(rows)
        width = ar.numel()
        if rank is None:
            key = torch.rand(pos.shape, generator=generator)
        else:
            key = rank[self.ids[pos]].to(torch.float64)
        key = _last(key, valid, ar)
        k = min(n, width)
        sel = torch.topk(key, k, dim=1, largest=False, sorted=True).indices
        p, ok = pos.gather(1, sel), valid.gather(1, sel)
        ids = torch.where(ok, self.ids[p], self.pad_id)
        vals = torch.where(ok, self.vals[p], 0.0)
        return self._finish(ids, vals, ~ok, cls)

    def _finish(self, ids, vals, pad, cls: bool):
        import torch

        if cls:
            b = ids.shape[0]
            ids = torch.cat([torch.full((b, 1), self.cls_id, dtype=ids.dtype), ids], 1)
            vals = torch.cat([torch.ones(b, 1, dtype=vals.dtype), vals], 1)
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), pad], 1)
        return ids.to(self.device), vals.to(self.device), pad.to(self.device)


def pretrain_batches(batcher: _Batcher, k: int, thin, bs: int, gen):
    """``epoch -> batches`` of (view 1, view 2, target) of ``k`` genes, cells shuffled.

    Views are binomially thinned at per-cell rates in ``thin`` (``None``: not thinned).
    """
    import torch

    n = batcher.n_obs

    def view(rows):
        if thin is None:
            return batcher.select(rows, k, generator=gen)
        return batcher.select_thinned(rows, k, tuple(thin), generator=gen)

    def batches(epoch: int):
        perm = torch.randperm(n, generator=gen)
        for sl in iter_batches(n, bs):
            rows = perm[sl]
            if rows.numel() < 2:  # NT-Xent needs a negative
                continue
            yield view(rows), view(rows), batcher.select(rows, k, generator=gen, cls=False)

    return batches


def finetune_batches(batcher: _Batcher, rank, y_all, n_genes: int, bs: int, gen, dev, oof=None):
    """``epoch -> batches`` of (ids, scales, pad, None, wide logits or None, labels)."""
    import torch

    n = batcher.n_obs

    def batches(epoch: int):
        perm = torch.randperm(n, generator=gen)
        for sl in iter_batches(n, bs):
            rows = perm[sl]
            yield (
                *batcher.select(rows, n_genes, rank=rank),
                None,
                None if oof is None else oof[rows].to(dev),
                y_all[rows].to(dev),
            )

    return batches


def _last(key, valid, ar):
    """``key`` with invalid positions after every valid one, in position order.

    Distinct keys for the padding too: ``topk`` over tied ``inf`` keys did not always
    pick the same positions, which changed trained weights in their last bits.
    """
    import torch

    return torch.where(valid, key, 1e300 * (1 + ar[None, :].to(torch.float64) / ar.numel()))


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
        raise ValueError(
            "labels_key= is required with adata_ref: name the obs column that "
            "holds the reference cell types."
        )
    if labels_key not in adata.obs:
        raise KeyError(
            f"labels_key {labels_key!r} not found in adata_ref.obs (columns: "
            f"{list(adata.obs.columns)})."
        )
    return _label_series(adata.obs[labels_key], f"adata_ref.obs[{labels_key!r}]")


def _label_series(labels, what: str = "labels") -> pd.Series:
    labels = pd.Series(labels).reset_index(drop=True)
    if labels.isna().any():
        raise ValueError(
            f"{what} has {int(labels.isna().sum())} missing "
            "(NaN) label(s); remove those cells or fill the labels."
        )
    if labels.astype(str).nunique() < 2:
        raise ValueError(
            f"{what} has a single class "
            f"({labels.astype(str).iloc[0]!r}); a classifier needs at least 2."
        )
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
            raise ValueError(
                f"class_weight must be 'balanced', a mapping or None, got {class_weight!r}."
            )
        counts = labels.value_counts().reindex(classes).to_numpy(dtype=np.float64)
        return len(labels) / (len(classes) * counts)
    if not isinstance(class_weight, Mapping):
        raise ValueError(
            f"class_weight must be 'balanced', a mapping or None, got {class_weight!r}."
        )
    missing = [c for c in classes if c not in class_weight]
    if missing:
        raise ValueError(
            f"class_weight has no weight for {len(missing)} reference label(s), "
            f"e.g. {missing[:3]}; give one for every label."
        )
    w = np.array([float(class_weight[c]) for c in classes])
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("class_weight values must be finite and > 0.")
    return w
