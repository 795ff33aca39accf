"""scRobust: self-supervised Transformer cell embeddings, annotation, pathways and markers.

Park & Lee, "scRobust: a robust self-supervised learning strategy to tackle the inherent
sparsity of single-cell RNA-seq data", Brief Bioinform 2024, 25(6):bbae586, §Methods
(eqs. 1–20).

Data flow. The input matrix (raw counts by default) is log-normalised once
(``log1p(x / library × 10⁴)``, as the authors' code) and kept as CSR arrays
(``indptr``, vocabulary ids, values). A mini-batch is a tensor of row indices; its tokens
are gathered from those arrays into padded ``(batch, length)`` index tensors, so the
matrix is never densified.
"""

from __future__ import annotations

import copy as _copy
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_counts,
    check_finite,
    check_non_negative,
    check_unique_var_names,
    describe_source,
    get_matrix,
    iter_batches,
    log_normalize,
    make_params,
    package_versions,
    progress_bar,
    resolve_device,
    seed_everything,
    seed_int,
)

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger("sctorch")

__all__ = [
    "ScRobustModel",
    "scrobust_annotate",
    "scrobust_embed",
    "scrobust_marker_genes",
    "scrobust_pathway_scores",
    "scrobust_pretrain",
]

SPECIAL_TOKENS = ("PAD", "SEP", "UNKNOWN", "CLS", "MASK")
_FORMAT = "sctorch.scrobust/1"
InputScale = Literal["counts", "log1p"]


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


# ============================================================================ the model
class ScRobustModel:
    """A trained scRobust network with its vocabulary and hyper-parameters.

    Created by :func:`scrobust_pretrain` (and fine-tuned copies by
    :func:`scrobust_annotate`); reloaded with :meth:`load`.

    Attributes
    ----------
    vocab
        Tokens in id order: special tokens first (``PAD``, ``SEP``, ``UNKNOWN``, ``CLS``
        and, for vocabularies built from ``var_names``, ``MASK``), then gene symbols.
    config
        Hyper-parameters of the network and of pre-training.
    classes
        Labels of the fine-tuned classifier (``None`` before fine-tuning).
    gene_detection
        For a fine-tuned model: the fraction of reference cells detecting each vocabulary
        token, ``(len(vocab),)``, NaN for tokens absent from the reference; it fixes the
        "highly unique genes" order of queries.
    history
        Per-epoch losses, ``{"pretrain": [...], "finetune": [...]}``.
    network
        The :class:`sctorch.nn._scrobust.ScRobustNetwork`.
    """

    def __init__(self, network, vocab: Sequence[str], config: dict[str, Any], *,
                 classes: Sequence[str] | None = None,
                 gene_detection: np.ndarray | None = None,
                 history: dict[str, list] | None = None):
        self.network = network
        self.vocab = list(vocab)
        self.config = dict(config)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.gene_detection = gene_detection
        self.history = history or {"pretrain": [], "finetune": []}
        self._index: dict[str, int] = {}
        for i, t in enumerate(self.vocab):
            self._index.setdefault(t, i)

    # ---------------------------------------------------------------- tokens
    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self._index["PAD"]

    @property
    def cls_id(self) -> int:
        """Id of the CLS token (its output is the cell embedding)."""
        return self._index["CLS"]

    def token_ids(self, genes: Sequence[str]) -> np.ndarray:
        """Vocabulary id of each gene, ``-1`` where it is not in the vocabulary."""
        n_special = 5 if "MASK" in self.vocab[:5] else 4
        special = set(self.vocab[:n_special])
        return np.array([-1 if g in special else self._index.get(g, -1) for g in map(str, genes)],
                        dtype=np.int64)

    @property
    def is_fine_tuned(self) -> bool:
        """Whether the network carries a trained classifier."""
        return self.classes is not None and self.network.classifier is not None

    def __repr__(self) -> str:
        c = self.config
        return (f"ScRobustModel(vocab={len(self.vocab)} tokens, d_model={c['d_model']}, "
                f"n_heads={c['n_heads']}, n_layers={c['n_layers']}, "
                f"classes={None if self.classes is None else len(self.classes)})")

    def to(self, device) -> ScRobustModel:
        """Move the network to ``device`` (in place); returns ``self``."""
        self.network.to(device)
        return self

    # ---------------------------------------------------------------- save / load
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write ``model.safetensors`` (weights) and ``config.json`` into folder ``path``.

        The JSON holds the vocabulary, hyper-parameters, classes, training history and
        package versions; no pickled objects are written.

        Raises
        ------
        FileExistsError
            If ``path`` already holds a model and ``overwrite`` is False.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if (path / "model.safetensors").exists() and not overwrite:
            raise FileExistsError(f"{path} already holds a saved model; pass overwrite=True.")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous()
                   for k, v in self.network.state_dict().items()}
        if self.gene_detection is not None:
            import torch

            tensors["_meta.gene_detection"] = torch.as_tensor(
                np.asarray(self.gene_detection, dtype=np.float32))
        save_file(tensors, str(path / "model.safetensors"))
        meta = {"format": _FORMAT, "vocab": self.vocab, "config": self.config,
                "classes": self.classes, "history": self.history,
                "versions": package_versions()}
        (path / "config.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> ScRobustModel:
        """Read a model written by :meth:`save` (safetensors + JSON; no code is executed).

        Raises
        ------
        FileNotFoundError
            If ``path`` lacks ``model.safetensors`` or ``config.json``.
        ValueError
            If the files are not an sctorch scRobust model.
        """
        from safetensors.torch import load_file

        from ..nn._scrobust import ScRobustNetwork

        path = Path(path)
        for f in ("model.safetensors", "config.json"):
            if not (path / f).exists():
                raise FileNotFoundError(f"{path / f} not found: not a saved ScRobustModel.")
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not {_FORMAT!r}.")
        tensors = load_file(str(path / "model.safetensors"))
        det = tensors.pop("_meta.gene_detection", None)
        c = meta["config"]
        classes = meta.get("classes")
        net = ScRobustNetwork(len(meta["vocab"]), c["d_model"], c["n_heads"], c["n_layers"],
                              c["dim_feedforward"], c["dropout"], c["head_dropout"],
                              n_classes=len(classes) if classes else 0)
        net.load_state_dict(tensors, strict=True)
        net.eval()
        model = cls(net, meta["vocab"], c, classes=classes,
                    gene_detection=None if det is None else det.numpy().astype(np.float64),
                    history=meta.get("history"))
        return model.to(resolve_device(device))


# ============================================================================ data → tokens
class _Tokens:
    """Log-normalised expression restricted to vocabulary genes, as CSR arrays."""

    def __init__(self, X: sparse.csr_matrix, var_ids: np.ndarray, n_missing: int):
        self.X = X  # cells × (genes in vocab), log-normalised, CSR, sorted
        self.var_ids = var_ids  # vocab id of each column of X
        self.n_missing = n_missing
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


def _prepare(adata: ad.AnnData, model_ids, *, layer: str | None, input_scale: InputScale,
             min_shared_genes: int, what: str = "adata") -> _Tokens:
    """Validate an AnnData and map it to vocabulary tokens (nothing is written)."""
    if input_scale not in ("counts", "log1p"):
        raise ValueError(f"input_scale must be 'counts' or 'log1p', got {input_scale!r}.")
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    src = describe_source(layer).replace("adata", what)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{what} is empty ({adata.n_obs} cells × {adata.n_vars} genes).")
    if input_scale == "counts":
        check_counts(X, what=src)
    else:
        check_finite(X, what=src)
        check_non_negative(X, what=src)
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
    if input_scale == "counts":
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
    return _Tokens(Xs.astype(np.float32), var_ids[keep], n_missing)


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

        Random subsets (without replacement) when ``rank`` is None, else the ``n`` genes of
        lowest ``rank`` (a per-token priority). Returns ``(ids, scales, pad)``.
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


def _check_positive(**kwargs) -> None:
    for name, val in kwargs.items():
        if val is not None and not (isinstance(val, int | float | np.number) and val > 0):
            raise ValueError(f"{name} must be a positive number, got {val!r}.")


def _target(adata, copy: bool):
    return adata.copy() if copy else adata


# ============================================================================ pre-training
def scrobust_pretrain(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    input_scale: InputScale = "counts",
    vocab: str | Path | Sequence[str] | None = None,
    n_genes_per_view: int | None = None,
    d_model: int = 512,
    n_layers: int | None = None,
    n_heads: int = 8,
    dim_feedforward: int | None = None,
    dropout: float = 0.1,
    head_dropout: float = 0.3,
    temperature: float = 0.07,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 5e-5,
    min_shared_genes: int = 10,
    device: str | None = None,
    rng: RandomState = 0,
    progress: bool = True,
) -> ScRobustModel:
    r"""Pre-train a scRobust encoder by cell augmentation (Park & Lee 2024, eqs. 1–11).

    Every cell is a set of tokens: its non-zero genes, each a trainable vector normalised
    to unit length and scaled by the gene's log-normalised expression (eqs. 1–2), plus a
    CLS token (scale 1) whose encoder output is the cell embedding; there are no
    positional embeddings. Each step draws, per cell, **two random subsets** of its
    non-zero genes (``n_genes_per_view`` each, without replacement, drawn independently so
    the views share genes only by chance) and a **third** subset whose expression is to be
    predicted. The loss (eq. 11) is the sum of

    - NT-Xent (SimCLR, eqs. 6–8) between the two views' CLS outputs passed through a
      two-layer projection head, temperature ``temperature``;
    - the MSE of gene-expression prediction (eqs. 9–10): each view's CLS output goes
      through a second two-layer head and is dotted with the raw gene vectors of the
      third subset to predict their expression. The paper leaves open which view
      predicts; both do here and their errors are averaged.

    The encoder is :class:`torch.nn.TransformerEncoder` with post-LayerNorm layers (the
    BERT layout): with pre-LayerNorm, ``LayerNorm(s · e) = LayerNorm(e)`` would erase the
    expression scale before the CLS token attends to the genes, so the encoder would see
    only which genes are detected. The gene vectors start with norm ≈ 1 so that the
    expression head's dot products start on the scale of log-normalised expression. Only
    the CLS output is used, so the last encoder layer is evaluated for the CLS query alone
    (same result, a fraction of the cost for long token sequences).

    Defaults follow the paper (``d_model=512``, 8 heads, 1 layer — 2 layers for ≥ 20,000
    cells —, Adam with ``lr=5e-5``, batch 64, τ = 0.07). The paper trains for up to 1,000
    epochs on a GPU; ``epochs=10`` is a laptop-CPU default. At CPU scale longer pre-training
    did not pay off: on ifnb PBMC (a 64-wide model) 50 epochs lowered the macro-F1 of the
    fine-tuned classifier from 0.831 to 0.731, and random initial weights scored 0.841
    (``benchmarks/scrobust_ablation.py``); the paper's GPU-scale pre-training was not tested.

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``), raw counts (``input_scale="counts"``, then
        log-normalised to 10⁴ per cell and log1p-transformed as the authors' code) or
        already log1p-normalised values (``input_scale="log1p"``). Sparse stays sparse.
    layer
        Layer holding the data; ``None`` uses ``adata.X``.
    input_scale
        ``"counts"`` or ``"log1p"`` (see ``adata``).
    vocab
        ``None`` builds the vocabulary from ``adata.var_names`` (ids 0–4 = PAD, SEP,
        UNKNOWN, CLS, MASK, then the genes); a path reads an ``ID,SYMBOL`` CSV such as
        scRobust's ``whole_human_vocab.csv`` (ids 0–3 = PAD, SEP, UNKWON, CLS); a
        sequence of gene names is used after the five special tokens. Genes of ``adata``
        missing from a given vocabulary are skipped (counted in a warning).
    n_genes_per_view
        Genes per view; ``None`` uses 10 % of the mean number of detected genes per cell
        (at least 8), as the paper.
    d_model, n_layers, n_heads, dim_feedforward, dropout
        Encoder width, layers (``None``: 1, or 2 when ``n_obs ≥ 20,000``), heads,
        feed-forward width (``None``: ``4 × d_model``) and dropout.
    head_dropout
        Dropout in the two-layer heads.
    temperature
        NT-Xent temperature τ.
    epochs, batch_size, lr
        Passes over the cells, cells per step, Adam learning rate.
    min_shared_genes
        Fewest genes that must be in the vocabulary.
    device
        Torch device; ``None`` picks CUDA, then MPS, then CPU.
    rng
        Seed or :class:`numpy.random.Generator`; the same seed on the same device gives the
        same model.
    progress
        Show a progress bar.

    Returns
    -------
    :class:`ScRobustModel` (in evaluation mode), with ``history['pretrain']`` holding the
    mean total, contrastive and MSE losses of each epoch.

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    ValueError
        If the data are not raw counts (or not finite/non-negative for ``"log1p"``),
        ``var_names`` are duplicated, a cell has no non-zero vocabulary gene, fewer than
        ``min_shared_genes`` genes are in the vocabulary, fewer than 2 cells are given, or
        a parameter is out of range.
    FileNotFoundError
        If a vocabulary file does not exist.
    """
    import torch

    from ..nn._scrobust import ScRobustNetwork

    _check_positive(d_model=d_model, n_heads=n_heads, epochs=epochs, batch_size=batch_size,
                    lr=lr, temperature=temperature, n_genes_per_view=n_genes_per_view,
                    n_layers=n_layers, dim_feedforward=dim_feedforward)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
    if adata.n_obs < 2:
        raise ValueError(f"Contrastive pre-training needs at least 2 cells, got {adata.n_obs}.")
    tokens = _build_vocab(vocab, adata.var_names)
    tmp = ScRobustModel(None, tokens, {})
    tok = _prepare(adata, tmp.token_ids, layer=layer, input_scale=input_scale,
                   min_shared_genes=min_shared_genes)
    if n_genes_per_view is None:
        n_genes_per_view = max(8, round(0.1 * float(np.diff(tok.indptr).mean())))
    if n_layers is None:
        n_layers = 2 if adata.n_obs >= 20_000 else 1
    config = {"d_model": int(d_model), "n_heads": int(n_heads), "n_layers": int(n_layers),
              "dim_feedforward": int(dim_feedforward or 4 * d_model), "dropout": float(dropout),
              "head_dropout": float(head_dropout), "temperature": float(temperature),
              "n_genes_per_view": int(n_genes_per_view), "input_scale": input_scale}

    dev = resolve_device(device)
    seed = seed_int(rng)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    net = ScRobustNetwork(len(tokens), d_model, n_heads, n_layers, config["dim_feedforward"],
                          dropout, head_dropout).to(dev)
    model = ScRobustModel(net, tokens, config)
    batcher = _Batcher(tok, pad_id=model.pad_id, cls_id=model.cls_id, device=dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = tok.n_obs
    bs = min(batch_size, n)
    steps = sum(1 for sl in iter_batches(n, bs) if sl.stop - sl.start >= 2)
    bar = progress_bar(total=epochs * steps, desc="scRobust pre-training", progress=progress)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        sums = np.zeros(3)
        count = 0
        for sl in iter_batches(n, bs):
            rows = perm[sl]
            if rows.numel() < 2:  # NT-Xent needs a negative
                continue
            v1 = batcher.select(rows, n_genes_per_view, generator=gen)
            v2 = batcher.select(rows, n_genes_per_view, generator=gen)
            tg = batcher.select(rows, n_genes_per_view, generator=gen, cls=False)
            loss, cl, mse = net.pretrain_loss(v1, v2, tg, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), cl.item(), mse.item()]
            count += 1
            bar.update(1)
        mean = sums / max(count, 1)
        model.history["pretrain"].append(
            {"epoch": epoch + 1, "loss": mean[0], "contrastive": mean[1], "mse": mean[2]})
        logger.info("scRobust pre-training epoch %d: loss %.4f (NT-Xent %.4f, MSE %.4f)",
                    epoch + 1, *mean)
    bar.close()
    net.eval()
    return model


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

    At CPU pre-training budgets the embedding is weak for clustering: on ifnb PBMC (a
    64-wide model, 5 epochs) Leiden on ``X_scrobust`` reached ARI 0.093 against cell types
    with all 14,053 genes and 0.242 with model and embedding on the 2,000 HVGs, against
    0.424 for PCA of those HVGs (``benchmarks/results/scrobust.md``); its first principal
    component follows sequencing depth. Prefer HVGs, and check the embedding against PCA
    before relying on it.

    Parameters
    ----------
    adata
        Cells × genes, raw counts (or log1p-normalised with ``input_scale="log1p"``).
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
    import torch

    _check_positive(n_genes=n_genes, batch_size=batch_size)
    if gene_order not in ("unique", "random"):
        raise ValueError(f"gene_order must be 'unique' or 'random', got {gene_order!r}.")
    if model is None:
        kw = dict(layer=layer, input_scale=input_scale, device=device, rng=rng,
                  progress=progress)
        model = scrobust_pretrain(adata, **{**kw, **dict(pretrain_kwargs or {})})
    tok = _prepare(adata, model.token_ids, layer=layer, input_scale=input_scale,
                   min_shared_genes=min_shared_genes)
    dev = resolve_device(device)
    model.to(dev)
    rank = _unique_rank(tok.detection(len(model.vocab))) if gene_order == "unique" else None
    gen = torch.Generator().manual_seed(seed_int(rng))
    emb = _encode(model, tok, dev, n_genes, batch_size, rank=rank, generator=gen,
                  progress=progress)
    target = _target(adata, copy)
    target.obsm[key_added] = emb
    target.uns[key_added] = {"params": make_params(
        n_genes=n_genes, gene_order=gene_order, layer=layer, input_scale=input_scale,
        model=repr(model), device=str(dev), rng=rng)}
    return target if copy else None


def _encode(model, tok, dev, n_genes, batch_size, *, rank, generator, progress,
            logits: bool = False) -> np.ndarray:
    import torch

    batcher = _Batcher(tok, pad_id=model.pad_id, cls_id=model.cls_id, device=dev)
    net = model.network
    net.eval()
    # cells in order of their number of genes: batches of similar length waste little padding
    order = torch.from_numpy(np.argsort(np.diff(tok.indptr), kind="stable"))
    out = None
    with torch.inference_mode():
        for sl in progress_bar(list(iter_batches(tok.n_obs, batch_size)), desc="scRobust",
                               progress=progress):
            rows = order[sl]
            ids, vals, pad = batcher.select(rows, n_genes, rank=rank, generator=generator)
            y = net.classify(ids, vals, pad) if logits else net.embed(ids, vals, pad)
            y = y.float().cpu().numpy()
            if out is None:
                out = np.empty((tok.n_obs, y.shape[1]), dtype=np.float32)
            out[rows.numpy()] = y
    return out


# ============================================================================ annotation
def _check_labels(adata: ad.AnnData, labels_key: str | None) -> pd.Series:
    if labels_key is None:
        raise ValueError("labels_key= is required with adata_ref: name the obs column that "
                         "holds the reference cell types.")
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key {labels_key!r} not found in adata_ref.obs (columns: "
                       f"{list(adata.obs.columns)}).")
    labels = adata.obs[labels_key]
    if labels.isna().any():
        raise ValueError(f"adata_ref.obs[{labels_key!r}] has {int(labels.isna().sum())} missing "
                         "(NaN) label(s); remove those cells or fill the labels.")
    if labels.astype(str).nunique() < 2:
        raise ValueError(f"adata_ref.obs[{labels_key!r}] has a single class "
                         f"({labels.astype(str).iloc[0]!r}); a classifier needs at least 2.")
    return labels.astype(str)


def scrobust_annotate(
    adata_query: ad.AnnData,
    adata_ref: ad.AnnData | None = None,
    *,
    labels_key: str | None = None,
    model: ScRobustModel | None = None,
    layer: str | None = None,
    ref_layer: str | None = None,
    input_scale: InputScale = "counts",
    n_genes: int = 800,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 5e-5,
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
    non-zero genes ordered by how rarely each gene is detected in the reference (rarest
    first), the first ``n_genes`` (800 as the paper) as input; the CLS output feeds a
    two-layer classifier, and encoder and classifier are trained with cross-entropy
    (Adam, ``lr``; the loss is class-weighted, see ``class_weight``). Query cells are
    encoded the same way, with the reference's detection
    order (query genes absent from the reference fall back to their detection in the
    query); the predicted label is the arg-max of the softmax and the confidence its
    probability. The cost grows linearly with ``n_genes`` (the last encoder layer is
    evaluated for the CLS query only); on a CPU, a small pre-trained model
    (``d_model=64``) with the paper's 800 genes, ``lr=1e-3`` and a few epochs is a
    practical setting (see ``benchmarks/scrobust.py``). Fewer genes are cheaper but drop
    the most widely detected genes first, which include many cell-type markers: on ifnb
    PBMC, 128 genes gave macro-F1 0.31 where 800 gave 0.56 (same model and epochs).
    Passing reference and query restricted to ~2,000 highly variable genes (chosen on the
    reference, e.g. ``ref[:, ref.var["highly_variable"]]`` and the same genes of the query)
    shortens every cell's token sequence: on ifnb PBMC (5-fold CV, same pre-trained model)
    it was 4–4.5× faster at equal or better macro-F1 (0.851 / 0.773 / 0.682 at 0 / 30 /
    50 % added dropout, against 0.804 / 0.774 / 0.683 on all 14,053 genes).

    Query genes missing from the model vocabulary are skipped (a warning gives the
    count); a query sharing fewer than ``min_shared_genes`` genes is refused.

    Parameters
    ----------
    adata_query
        Cells to annotate, raw counts (or log1p values with ``input_scale="log1p"``).
    adata_ref
        Labelled reference, same scale. ``None`` uses ``model``, which must then be
        fine-tuned already (from a previous call with ``return_model=True``).
    labels_key
        ``adata_ref.obs`` column holding the cell types (required with ``adata_ref``).
    model
        A pre-trained model to fine-tune (a copy is fine-tuned; ``model`` is not changed).
        ``None`` pre-trains one on ``adata_ref`` first with ``pretrain_kwargs``.
    layer, ref_layer
        Layers of query and reference (``None``: ``.X``).
    input_scale
        ``"counts"`` or ``"log1p"``, for both.
    n_genes
        Highly unique genes per cell (800 as the paper).
    epochs, batch_size, lr
        Fine-tuning passes, cells per step, Adam learning rate (paper: 20 epochs, 5e-5).
    class_weight
        Weights of the classes in the cross-entropy: ``"balanced"`` (default) weighs class
        ``c`` by ``n / (n_classes × n_c)``, as scikit-learn's ``class_weight="balanced"``;
        a mapping ``{label: weight}`` (every reference label) or ``None`` (unweighted).
        The paper does not say how rare types are handled; it reports macro-F1, which
        counts every cell type equally, and cell-type references are very unbalanced
        (ifnb PBMC: 8 to 912 cells per type). There, 5-fold CV at 0 / 30 / 50 % added
        dropout, balanced weights raised macro-F1 from 0.717 / 0.638 / 0.585 to
        0.804 / 0.774 / 0.683, accuracy 0.865 / 0.801 / 0.769 → 0.839 / 0.812 / 0.769
        (``benchmarks/results/scrobust.md``); on one split of a smaller gene set they
        lowered accuracy (0.839 → 0.773) at equal macro-F1. ``None`` is the authors'
        plain cross-entropy.
    min_shared_genes
        Fewest query genes that must be in the vocabulary.
    pretrain_kwargs
        Arguments of :func:`scrobust_pretrain` when ``model`` is None.
    key_added, confidence_key
        ``obs`` keys of the labels (categorical) and confidences (float32, in [0, 1]).
    return_model
        Also return the fine-tuned :class:`ScRobustModel`.
    device, rng, progress
        Torch device, seed, progress bar.
    copy
        Write into a copy of ``adata_query`` and return it.

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
    import torch

    _check_positive(n_genes=n_genes, epochs=epochs, batch_size=batch_size, lr=lr)
    # ---- validate everything before training or writing
    if adata_ref is None:
        if model is None or not model.is_fine_tuned:
            raise ValueError("Give adata_ref= and labels_key= to train a classifier, or a "
                             "model fine-tuned by scrobust_annotate(..., return_model=True).")
        labels = None
    else:
        labels = _check_labels(adata_ref, labels_key)
        weights = _class_weights(labels, class_weight)
    if model is None:
        model_ids = ScRobustModel(None, _build_vocab(None, adata_ref.var_names), {}).token_ids
    else:
        model_ids = model.token_ids
    qtok = _prepare(adata_query, model_ids, layer=layer, input_scale=input_scale,
                    min_shared_genes=min_shared_genes, what="adata_query")
    dev = resolve_device(device)
    seed = seed_int(rng)

    if adata_ref is not None:
        if model is None:
            kw = dict(layer=ref_layer, input_scale=input_scale, device=device, rng=seed,
                      progress=progress)
            model = scrobust_pretrain(adata_ref, **{**kw, **dict(pretrain_kwargs or {})})
        rtok = _prepare(adata_ref, model.token_ids, layer=ref_layer, input_scale=input_scale,
                        min_shared_genes=min_shared_genes, what="adata_ref")
        model = _finetune(model, rtok, labels, dev=dev, n_genes=n_genes, epochs=epochs,
                          batch_size=batch_size, lr=lr, weights=weights, seed=seed,
                          progress=progress)
    model.to(dev)
    det = model.gene_detection.copy()
    qdet = qtok.detection(len(model.vocab))
    det = np.where(np.isnan(det), qdet, det)
    logits = _encode(model, qtok, dev, n_genes, batch_size, rank=_unique_rank(det),
                     generator=None, progress=progress, logits=True)
    prob = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    pred = np.asarray(model.classes)[prob.argmax(1)]
    target = _target(adata_query, copy)
    target.obs[key_added] = pd.Categorical(pred, categories=model.classes)
    target.obs[confidence_key] = prob.max(1).astype(np.float32)
    target.uns[key_added] = {"params": make_params(
        labels_key=labels_key, n_genes=n_genes, epochs=epochs, batch_size=batch_size, lr=lr,
        class_weight=None if adata_ref is None or class_weight is None else (
            class_weight if isinstance(class_weight, str)
            else {str(k): float(v) for k, v in class_weight.items()}),
        layer=layer, ref_layer=ref_layer, input_scale=input_scale,
        n_query_genes_skipped=qtok.n_missing, model=repr(model), device=str(dev), rng=rng)}
    out = target if copy else None
    if return_model:
        return (out, model) if copy else model
    return out


def _class_weights(labels: pd.Series, class_weight) -> np.ndarray | None:
    """Cross-entropy weight per class (classes in sorted order), or None."""
    if class_weight is None:
        return None
    classes = sorted(labels.unique())
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', a mapping or None, got "
                             f"{class_weight!r}.")
        counts = labels.value_counts().reindex(classes).to_numpy(dtype=np.float64)
        return len(labels) / (len(classes) * counts)
    missing = [c for c in classes if c not in class_weight]
    if missing:
        raise ValueError(f"class_weight has no weight for {len(missing)} reference label(s), "
                         f"e.g. {missing[:3]}; give one for every label.")
    w = np.array([float(class_weight[c]) for c in classes])
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("class_weight values must be finite and > 0.")
    return w


def _finetune(model: ScRobustModel, rtok: _Tokens, labels: pd.Series, *, dev, n_genes, epochs,
              batch_size, lr, weights, seed, progress) -> ScRobustModel:
    import torch
    import torch.nn.functional as F

    classes = sorted(labels.unique())
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=dev)
    y_all = torch.as_tensor(np.array(pd.Categorical(labels, categories=classes).codes),
                            dtype=torch.long)
    ft = ScRobustModel(_copy.deepcopy(model.network).to(dev), model.vocab, model.config,
                       classes=classes, history=_copy.deepcopy(model.history))
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    ft.network.set_classifier(len(classes))
    ft.network.to(dev)
    ft.gene_detection = rtok.detection(len(ft.vocab))
    rank = _unique_rank(ft.gene_detection)
    batcher = _Batcher(rtok, pad_id=ft.pad_id, cls_id=ft.cls_id, device=dev)
    params = [p for name, p in ft.network.named_parameters()
              if not name.startswith(("cl_head", "ge_head"))]
    opt = torch.optim.Adam(params, lr=lr)
    n = rtok.n_obs
    steps = len(list(iter_batches(n, batch_size)))
    bar = progress_bar(total=epochs * steps, desc="scRobust fine-tuning", progress=progress)
    ft.network.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tot, correct = 0.0, 0
        for sl in iter_batches(n, batch_size):
            rows = perm[sl]
            ids, vals, pad = batcher.select(rows, n_genes, rank=rank)
            y = y_all[rows].to(dev)
            out = ft.network.classify(ids, vals, pad)
            loss = F.cross_entropy(out, y, weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(rows)
            correct += int((out.argmax(1) == y).sum())
            bar.update(1)
        ft.history["finetune"].append({"epoch": epoch + 1, "loss": tot / n,
                                       "accuracy": correct / n})
        logger.info("scRobust fine-tuning epoch %d: loss %.4f, accuracy %.3f", epoch + 1,
                    tot / n, correct / n)
    bar.close()
    ft.network.eval()
    return ft


# ============================================================================ pathways
def _load_gene_sets(gene_sets) -> dict[str, list[str]]:
    if isinstance(gene_sets, Mapping):
        return {str(k): [str(g) for g in v] for k, v in gene_sets.items()}
    if isinstance(gene_sets, str | Path):
        from ..datasets import gene_sets as _gs

        return _gs(gene_sets)
    raise ValueError("gene_sets must be a dict {name: [genes]} or the path/alias of a .gmt or "
                     f".json file, got {type(gene_sets).__name__}.")


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

    For a gene set :math:`S`, with :math:`\hat e_g` the unit-norm trained gene vector of
    gene :math:`g` (the token embedding of eq. 1), the *pathway embedding* is the sum of
    its genes' embeddings, unscaled (eqs. 16–17), and the *pathway-informed cell
    embedding* of cell :math:`c` is the same sum with each gene scaled by the cell's
    log-normalised expression :math:`x_{cg}` (eqs. 18–19; eq. 2's tokens):

    .. math:: p_S = \sum_{g \in S} \hat e_g, \qquad
              c_S = \sum_{g \in S} x_{cg} \hat e_g .

    The closeness uses both angle and magnitude (eq. 20):

    .. math:: s(c_S, p_S) = \frac{c_S \cdot p_S}{\lVert p_S \rVert^2}
              = \frac{\lVert c_S \rVert \cos\theta}{\lVert p_S \rVert},

    the length of the projection of :math:`c_S` on :math:`p_S` in units of
    :math:`\lVert p_S \rVert` (1 when the cell expresses every gene of the set at
    log-expression 1). Each cell's label is the set with the highest score; with
    cell-type marker sets this is an unsupervised annotation.

    Both embeddings are built from the trained gene vectors, following the description
    of eqs. 16–19 (the set's gene embeddings, unscaled / scaled by expression). The
    authors' code instead passes the set through the encoder and reads the CLS output;
    in this post-LayerNorm encoder that output has a fixed norm, so the magnitude that
    eq. 20 relies on would be lost. Genes a cell does not express contribute nothing.

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
        Input matrix and its scale.
    min_genes
        Sets with fewer genes in both ``adata`` and the vocabulary are dropped (warning).
    key_added, label_key
        ``obsm`` key of the scores and ``obs`` key of the labels.
    copy
        Return a modified copy.

    Returns
    -------
    ``None`` (or a copy), having written ``obsm[key_added]`` (DataFrame,
    ``n_obs × n_sets`` kept, float32), ``obs[label_key]`` (categorical) and
    ``uns[key_added]`` = {``genes_used`` (per set), ``params``}.

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
    import torch

    _check_positive(min_genes=min_genes)
    sets = _load_gene_sets(gene_sets)
    tok = _prepare(adata, model.token_ids, layer=layer, input_scale=input_scale,
                   min_shared_genes=1)
    col_of = {int(v): j for j, v in enumerate(tok.var_ids)}
    kept: dict[str, list[int]] = {}
    dropped = []
    for name, genes in sets.items():
        ids = [int(i) for i in dict.fromkeys(model.token_ids(genes)) if i >= 0 and i in col_of]
        if len(ids) >= min_genes:
            kept[name] = ids
        else:
            dropped.append(name)
    if not kept:
        raise ValueError(f"None of the {len(sets)} gene sets has {min_genes} or more genes in "
                         "both adata.var_names and the model vocabulary; check the gene "
                         "symbols (human vs mouse) or lower min_genes.")
    if dropped:
        warnings.warn(f"{len(dropped)} gene set(s) with fewer than {min_genes} usable genes "
                      f"were dropped, e.g. {dropped[:3]}.", UserWarning, stacklevel=2)
    with torch.no_grad():
        W = torch.nn.functional.normalize(model.network.encoder.tokens.weight.detach().cpu()
                                          .double(), dim=1).numpy()
    Xc = tok.X.tocsc()
    scores = np.zeros((tok.n_obs, len(kept)), dtype=np.float32)
    for j, ids in enumerate(kept.values()):
        Ws = W[ids]  # (|S|, d) unit gene vectors
        p = Ws.sum(0)
        weight = Ws @ p / (p @ p)  # c_S · p_S / |p_S|² = Σ_g x_cg (ê_g · p_S) / |p_S|²
        sub = Xc[:, [col_of[i] for i in ids]]
        scores[:, j] = np.asarray(sub @ weight).ravel()
    names = list(kept)
    df = pd.DataFrame(scores, index=adata.obs_names.copy(), columns=pd.Index(names))
    target = _target(adata, copy)
    target.obsm[key_added] = df
    target.obs[label_key] = pd.Categorical(np.asarray(names)[scores.argmax(1)], categories=names)
    target.uns[key_added] = {
        "genes_used": {k: [model.vocab[i] for i in v] for k, v in kept.items()},
        "params": make_params(min_genes=min_genes, layer=layer, input_scale=input_scale,
                              n_sets_dropped=len(dropped), model=repr(model))}
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
    n_genes
        Markers reported per group.
    n_tokens
        Genes per cell fed to the encoder.
    layer, input_scale
        Input matrix and its scale.
    method
        ``"specific"`` or ``"mean"`` (see above).
    batch_size
        Cells per forward pass.
    key_added
        ``uns`` key of the result.
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
    import torch

    _check_positive(n_genes=n_genes, n_tokens=n_tokens, batch_size=batch_size)
    if method not in ("specific", "mean"):
        raise ValueError(f"method must be 'specific' or 'mean', got {method!r}.")
    if groupby not in adata.obs:
        raise KeyError(f"groupby {groupby!r} not found in adata.obs (columns: "
                       f"{list(adata.obs.columns)}).")
    groups = adata.obs[groupby]
    if groups.isna().any():
        raise ValueError(f"adata.obs[{groupby!r}] has {int(groups.isna().sum())} NaN value(s).")
    groups = groups.astype(str)
    names = sorted(groups.unique())
    if len(names) < 2:
        raise ValueError(f"adata.obs[{groupby!r}] has a single group; markers need at least 2.")
    tok = _prepare(adata, model.token_ids, layer=layer, input_scale=input_scale,
                   min_shared_genes=1)
    dev = resolve_device(device)
    model.to(dev)
    net = model.network
    net.eval()
    code = torch.as_tensor(np.array(pd.Categorical(groups, categories=names).codes),
                           dtype=torch.long)
    V = len(model.vocab)
    acc = torch.zeros(len(names), V, dtype=torch.float64)
    rank = _unique_rank(tok.detection(V))
    batcher = _Batcher(tok, pad_id=model.pad_id, cls_id=model.cls_id, device=dev)
    with torch.inference_mode():
        for sl in progress_bar(list(iter_batches(tok.n_obs, batch_size)), desc="attention",
                               progress=progress):
            rows = torch.arange(sl.start, sl.stop)
            ids, vals, pad = batcher.select(rows, n_tokens, rank=rank)
            w = net.encoder.cls_attention(ids, vals, pad).double().cpu()
            ids = ids.cpu()
            w[:, 0] = 0.0  # the CLS token itself
            flat = code[rows][:, None] * V + ids
            acc.view(-1).index_add_(0, flat.reshape(-1), w.reshape(-1))
    counts = torch.bincount(code, minlength=len(names)).double()
    total = acc.sum(0)
    mean_in = (acc / counts[:, None]).numpy()
    mean_out = ((total[None] - acc) / (len(groups) - counts)[:, None]).numpy()
    gene_ids = tok.var_ids
    gene_names = np.asarray([model.vocab[i] for i in gene_ids], dtype=object)
    eps = 1e-9
    k = min(n_genes, len(gene_ids))
    rec = {f: [] for f in ("names", "scores", "logfoldchanges")}
    for g in range(len(names)):
        s = mean_in[g, gene_ids] - (mean_out[g, gene_ids] if method == "specific" else 0.0)
        top = np.argsort(-s, kind="stable")[:k]
        rec["names"].append(gene_names[top].astype(str))
        rec["scores"].append(s[top].astype(np.float32))
        rec["logfoldchanges"].append(np.log2((mean_in[g, gene_ids[top]] + eps)
                                             / (mean_out[g, gene_ids[top]] + eps)))
    result = {f: np.rec.fromarrays(v, names=names) for f, v in rec.items()}
    nan = np.full(k, np.nan)
    result["pvals"] = np.rec.fromarrays([nan] * len(names), names=names)
    result["pvals_adj"] = np.rec.fromarrays([nan] * len(names), names=names)
    result["params"] = {"groupby": groupby, "reference": "rest", "method": "scrobust_attention",
                        "use_raw": False, "layer": "None" if layer is None else layer,
                        "corr_method": "none", **make_params(n_tokens=n_tokens,
                                                             aggregation=method,
                                                             device=str(dev))}
    target = _target(adata, copy)
    target.uns[key_added] = result
    return target if copy else None
