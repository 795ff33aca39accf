"""scRobust training from a file larger than memory: mini-batches read from disk.

For an AnnData opened with ``anndata.read_h5ad(path, backed="r")``,
:func:`disk_tokens` makes one pass over row blocks (checks, number of vocabulary genes
per cell, detection of each gene) and keeps only those per-cell and per-gene summaries.
:class:`DiskBatcher` then reads the rows of each mini-batch from the file, maps them to
tokens exactly as the in-memory path does (:func:`._data.block_tokens`, per cell), and
draws the same genes from the same random numbers, so training from the file gives the
weights training from memory gives (``tests/test_scrobust.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._utils import iter_batches, iter_row_blocks, read_rows
from ._data import BLOCK_ROWS, _Batcher, _Shared, _Tokens, _validate, block_tokens

if TYPE_CHECKING:
    import anndata as ad


class DiskTokens:
    """Tokens of (some rows of) a backed matrix, read on demand.

    Holds the on-disk matrix ``X``, the mapping of its genes to the vocabulary
    (``shared``), the file rows it covers (``rows``) and, per covered cell, the number of
    non-zero vocabulary genes (``indptr``, as the CSR of the in-memory tokens) — never the
    values. :meth:`load` reads cells into in-memory :class:`._data._Tokens`.
    """

    def __init__(self, X, shared: _Shared, rows: np.ndarray, lengths: np.ndarray, nnz: np.ndarray):
        self.X, self.shared, self.rows = X, shared, rows
        self.lengths, self.nnz = lengths, nnz
        self.indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.input_scale, self.n_missing = shared.scale, shared.n_missing

    @property
    def n_obs(self) -> int:
        return int(self.rows.size)

    @property
    def has_counts(self) -> bool:
        return self.input_scale == "counts"

    def detection(self, vocab_size: int) -> np.ndarray:
        """Fraction of the covered cells detecting each vocabulary token (NaN: not in the data)."""
        out = np.full(vocab_size, np.nan)
        out[self.shared.var_ids] = self.nnz / max(self.n_obs, 1)
        return out

    def subset(self, rows: np.ndarray) -> DiskTokens:
        """The cells ``rows`` (positions among the covered cells), still on disk.

        The detection of a subset is not known without reading it: it is NaN until
        :meth:`load` (only the full pass knows it).
        """
        rows = np.asarray(rows)
        return DiskTokens(
            self.X, self.shared, self.rows[rows], self.lengths[rows], np.full(self.nnz.size, np.nan)
        )

    def load(self, rows: np.ndarray | None = None) -> _Tokens:
        """In-memory tokens of the covered cells (or of ``rows`` among them, in that order)."""
        file_rows = self.rows if rows is None else self.rows[np.asarray(rows)]
        parts = [
            block_tokens(read_rows(self.X, _as_slice(file_rows[sl])), file_rows[sl], self.shared)
            for sl in iter_batches(file_rows.size, BLOCK_ROWS)
        ]
        return parts[0] if len(parts) == 1 else _Tokens.concat(parts)

    def apply(self, fn, block_size: int) -> np.ndarray:
        """``fn(tokens)`` over consecutive blocks of ``block_size`` covered cells, stacked.

        Only one block is in memory at a time, besides the output ``(n_obs, width)``.
        """
        out = None
        for sl in iter_batches(self.n_obs, block_size):
            y = fn(self.load(np.arange(sl.start, sl.stop)))
            if out is None:
                out = np.empty((self.n_obs, y.shape[1]), dtype=y.dtype)
            out[sl] = y
        return out


def _as_slice(rows: np.ndarray):
    """Consecutive increasing rows as a slice (one contiguous read), else the rows."""
    if rows.size > 1 and (np.diff(rows) == 1).all():
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def disk_tokens(
    adata: ad.AnnData,
    model_ids,
    *,
    layer: str | None,
    input_scale: str,
    min_shared_genes: int,
    what: str = "adata",
) -> DiskTokens:
    """Validate a backed AnnData in one pass over row blocks; keep per-cell summaries only.

    The same checks and errors as :func:`._data._prepare` (which loads the tokens into
    memory); memory grows by three integers per cell.
    """
    X, shared = _validate(
        adata,
        model_ids,
        layer=layer,
        input_scale=input_scale,
        min_shared_genes=min_shared_genes,
        what=what,
    )
    lengths = np.empty(adata.n_obs, dtype=np.int64)
    nnz = np.zeros(shared.keep.size)
    for sl, block in iter_row_blocks(X, BLOCK_ROWS):
        tok = block_tokens(block, sl, shared)
        lengths[sl] = np.diff(tok.X.indptr)
        nnz += np.bincount(tok.X.indices, minlength=shared.keep.size)
    return DiskTokens(X, shared, np.arange(adata.n_obs), lengths, nnz)


class DiskBatcher:
    """:class:`._data._Batcher` over a :class:`DiskTokens`: each mini-batch read from disk.

    The rows of a call are read (once for consecutive calls with the same ``rows``
    tensor: the two views and the target of a pre-training step) into a batcher of their
    own, in the order given, so genes drawn from the same generator are the genes the
    in-memory batcher draws.
    """

    def __init__(self, tok: DiskTokens, *, pad_id: int, cls_id: int, device, values: str = "log1p"):
        self.tok, self.values = tok, values
        self.pad_id, self.cls_id, self.device = pad_id, cls_id, device
        self._rows, self._local = None, None

    @property
    def n_obs(self) -> int:
        return self.tok.n_obs

    def _batch(self, rows):
        import torch

        if rows is not self._rows:
            b = _Batcher(
                self.tok.load(rows.numpy()),
                pad_id=self.pad_id,
                cls_id=self.cls_id,
                device=self.device,
                values=self.values,
            )
            self._rows, self._local = rows, (b, torch.arange(len(rows)))
        return self._local

    def select(self, rows, n: int, **kwargs):
        b, local = self._batch(rows)
        return b.select(local, n, **kwargs)

    def select_thinned(self, rows, n: int, rate_range, *, generator):
        b, local = self._batch(rows)
        return b.select_thinned(local, n, rate_range, generator=generator)


__all__ = ["DiskBatcher", "DiskTokens", "disk_tokens"]
