"""scRobust model selection and the wide path's features (no training here).

- :func:`knn_agreement`: label-free pre-training score — the overlap of the k-NN graphs
  of the embeddings of two independently thinned copies of the same cells. Each copy
  keeps each molecule of a cell with its own random rate, so the two copies of a cell
  differ in depth; an embedding that encodes depth gives the two copies different
  neighbours and scores low (molecular cross-validation, Batson et al. 2019, applied to
  neighbourhoods).
- :func:`holdout`: a stratified held-out part of a labelled reference (fine-tuning epochs
  are chosen by its macro-F1, as the authors' code does with its validation split).
- :func:`select_wide_genes` / :func:`wide_matrix`: the reference's highly variable genes
  and their log-normalised expression, the input of the wide (linear) classifier path.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ._data import _Tokens, _unique_rank, thinned_tokens


def knn_agreement(emb_a: np.ndarray, emb_b: np.ndarray, k: int = 15) -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours shared by two embeddings.

    Cosine neighbourhoods (rows L2-normalised), the cell itself excluded; 1 when the two
    graphs are identical, about ``k / n`` for unrelated ones.
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, emb_a.shape[0] - 1))
    nbrs = []
    for e in (emb_a, emb_b):
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        idx = NearestNeighbors(n_neighbors=k + 1).fit(e).kneighbors(e, return_distance=False)
        nbrs.append(idx[:, 1:])
    a, b = nbrs
    return float(np.mean([np.intersect1d(x, y).size / k for x, y in zip(a, b, strict=True)]))


def thinned_pair(
    tok: _Tokens, n_cells: int, rate_range: tuple[float, float], seed: int
) -> tuple[_Tokens, _Tokens]:
    """Two independently thinned copies of (up to ``n_cells`` random) cells of ``tok``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(tok.n_obs, size=min(n_cells, tok.n_obs), replace=False))
    sub = tok.subset(rows).load()
    return thinned_tokens(sub, rate_range, rng), thinned_tokens(sub, rate_range, rng)


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, held-out)`` row indices; classes of < 5 cells stay in training."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        m = round(fraction * idx.size) if idx.size >= 5 else 0
        held.append(idx[:m])
        train.append(idx[m:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def select_wide_genes(tok: _Tokens, n_top: int) -> np.ndarray:
    """Vocabulary ids of the ``n_top`` highly variable genes of ``tok`` (all if fewer).

    Scanpy's Seurat-flavour dispersion ranking on the log-normalised values
    (:func:`scanpy.pp.highly_variable_genes`), ids in vocabulary order.
    """
    import anndata as ad
    import scanpy as sc

    present = np.flatnonzero(np.diff(tok.X.tocsc().indptr) > 0)
    if present.size <= n_top:
        return np.sort(tok.var_ids[present])
    a = ad.AnnData(tok.X[:, present].copy())
    sc.pp.highly_variable_genes(a, n_top_genes=int(n_top), flavor="seurat")
    return np.sort(tok.var_ids[present[a.var["highly_variable"].to_numpy()]])


def wide_matrix(tok: _Tokens, wide_ids: np.ndarray) -> sparse.csr_matrix:
    """Cells × ``wide_ids`` log-normalised expression (zero for genes ``tok`` lacks)."""
    col_of = {int(v): j for j, v in enumerate(tok.var_ids)}
    src = np.array([col_of.get(int(w), -1) for w in wide_ids])
    have = np.flatnonzero(src >= 0)
    sel = sparse.csr_matrix(
        (np.ones(have.size, dtype=np.float32), (src[have], have)),
        shape=(tok.X.shape[1], len(wide_ids)),
    )
    return sparse.csr_matrix(tok.X @ sel, dtype=np.float32)


#: the inverse L2 strengths the wide path chooses from (``wide_c=None``)
WIDE_C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


def fit_wide(
    W: sparse.csr_matrix,
    y: np.ndarray,
    n_classes: int,
    class_weight,
    seed: int,
    oof: bool = True,
    c: float | None = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """The wide path: a logistic regression on ``W`` (cells × HVGs) and out-of-fold logits.

    :class:`sklearn.linear_model.LogisticRegression` (L2 with inverse strength ``c``,
    lbfgs; ``class_weight`` as given: ``None``, ``"balanced"`` or ``{code: weight}``)
    fitted on all rows gives the weights ``(n_classes, n_features)`` and bias
    ``(n_classes,)``; 5-fold (fewer for small classes)
    :func:`sklearn.model_selection.cross_val_predict` gives each training cell logits from
    a model that did not see it, so the deep path learns to correct the linear model's
    errors on unseen cells rather than its over-confident in-sample fit (``oof=False``: no
    out-of-fold logits, ``None``). ``c=None`` chooses ``c`` from :data:`WIDE_C_GRID` by the
    macro-F1 of those out-of-fold predictions (labelled cells only, none held out from the
    caller; ``c=1`` where a class has a single cell). Returns ``(coef, bias, logits, c)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(y, minlength=n_classes)
    k = int(min(5, counts[counts > 0].min()))
    cv = StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None

    def out_of_fold(c_: float) -> np.ndarray:
        lr_ = LogisticRegression(C=c_, max_iter=1000, class_weight=class_weight)
        z = cross_val_predict(lr_, W, y, cv=cv, method="decision_function")
        return np.stack([np.zeros_like(z), z], 1) if z.ndim == 1 else z

    logits = None
    if c is None and cv is None:
        c = 1.0
    elif c is None:
        found = {c_: out_of_fold(c_) for c_ in WIDE_C_GRID}
        classes = np.flatnonzero(counts > 0)
        f1 = {c_: f1_score(y, classes[z.argmax(1)], average="macro") for c_, z in found.items()}
        c = max(WIDE_C_GRID, key=lambda c_: f1[c_])  # the first of equal scores
        logits = found[c]
    lr = LogisticRegression(C=float(c), max_iter=1000, class_weight=class_weight)
    lr.fit(W, y)
    coef, bias = lr.coef_, lr.intercept_
    if n_classes == 2:  # sklearn keeps one row for two classes: logits (0, d)
        coef = np.vstack([np.zeros_like(coef), coef])
        bias = np.array([0.0, bias[0]])
    if not oof:
        return coef.astype(np.float32), bias.astype(np.float32), None, float(c)
    if logits is None:  # c was given; a class with a single cell: in-sample logits
        logits = out_of_fold(float(c)) if cv is not None else W @ coef.T + bias
    return (
        coef.astype(np.float32),
        bias.astype(np.float32),
        np.asarray(logits, np.float32),
        float(c),
    )


def knn_validator(model, tok: _Tokens, val_cells: int, embed_genes: int, seed: int, dev):
    """``(validate, history key)``: k-NN agreement of two thinned copies of ``val_cells`` cells.

    The copies are thinned at rates in ``model.config.view_thinning`` (or (0.2, 0.8)) and
    embedded from their ``embed_genes`` highly unique genes.
    """
    rates = tuple(model.config.view_thinning or (0.2, 0.8))
    ta, tb = thinned_pair(tok, val_cells, rates, seed + 1)
    ranks = [_unique_rank(t.detection(len(model.genes))) for t in (ta, tb)]

    def validate() -> float:
        ea, eb = (
            model.encode(t, dev, embed_genes, 128, rank=r, generator=None, progress=False)
            for t, r in ((ta, ranks[0]), (tb, ranks[1]))
        )
        return knn_agreement(ea, eb)

    return validate, "pretrain_knn_agreement"


def contrastive_validator(model, tok: _Tokens, batch_size: int, seed: int, dev):
    """``(training tokens, validate, key)``: NT-Xent of 10 % held-out cells (authors' rule).

    The same views every epoch; the held-out cells are left out of the training tokens.
    """
    import torch

    rng = np.random.default_rng(seed + 2)
    perm = rng.permutation(tok.n_obs)
    n_val = max(2, round(0.1 * tok.n_obs)) if tok.n_obs >= 20 else 0
    if n_val == 0:
        raise ValueError("select='contrastive' needs at least 20 cells (10 % held out).")
    vtok, ttok = tok.subset(np.sort(perm[:n_val])).load(), tok.subset(np.sort(perm[n_val:]))
    vgen = torch.Generator()

    def validate() -> float:
        vgen.manual_seed(seed + 3)  # the same views every epoch
        batches = model.pretrain_batches(vtok, min(batch_size, vtok.n_obs), vgen, dev)
        temperature = model.config.temperature
        losses = [
            float(model.module.pretrain_loss(b, temperature).metrics["contrastive"])
            for b in batches(0)
        ]
        return float(np.mean(losses))

    return ttok, validate, "pretrain_val_contrastive"


def fit_wide_path(
    model,
    tok: _Tokens,
    codes: np.ndarray,
    weights,
    seed: int,
    oof: bool = True,
    c: float | None = 1.0,
):
    """Fit ``model``'s wide path (a frozen logistic regression) on ``tok``.

    Returns the out-of-fold logits ``(n_obs, n_classes)`` tensor (``None`` with
    ``oof=False``). ``weights``: one cross-entropy weight per class code, or ``None``.
    ``c``: the inverse L2 strength (``None``: chosen, see :func:`fit_wide`); the one used
    is recorded in ``model.history['wide_c']`` (a one-element list, as every history entry).
    """
    import torch

    cw = None if weights is None else dict(enumerate(map(float, weights)))
    coef, bias, logits, c = fit_wide(
        wide_matrix(tok, model.wide_ids), codes, len(model.classes), cw, seed, oof=oof, c=c
    )
    model.history["wide_c"] = [c]
    model.module.set_wide(coef, bias)
    return None if logits is None else torch.from_numpy(logits)


def wide_source(model, tok: _Tokens):
    """``(rows, device) -> (len(rows), n_wide)`` features of the wide path (or None)."""
    import torch

    if model.wide_ids is None or model.config.head == "deep":
        return lambda rows, dev: None
    W = wide_matrix(tok, model.wide_ids)
    return lambda rows, dev: torch.from_numpy(W[np.asarray(rows)].toarray()).to(dev)


def held_out_scores(ft, vtok: _Tokens, yv: np.ndarray, dev, n_tokens: int, batch_size: int):
    """``() -> (macro-F1, cross-entropy)`` of fine-tuned ``ft`` on held-out reference cells.

    The cross-entropy is unweighted, so that types with one held-out cell do not rule it.
    """
    import torch
    from sklearn.metrics import f1_score

    def scores() -> tuple[float, float]:
        logit = ft.logits(vtok, dev, n_tokens, batch_size, progress=False)
        ce = torch.nn.functional.cross_entropy(torch.from_numpy(logit), torch.from_numpy(yv).long())
        return float(f1_score(yv, logit.argmax(1), average="macro")), float(ce)

    return scores


def gate_deep_path(ft, base: tuple[float, float], scores) -> None:
    """Zero the deep path of a wide-and-deep ``ft`` unless it beat the wide path alone.

    ``base``: held-out (macro-F1, cross-entropy) of the wide path alone; the deep path is
    kept only if both improve. Recorded as ``history['finetune_gate']`` = (F1, CE of the
    wide path, F1, CE of both).
    """
    import torch

    ft.module.eval()
    with torch.no_grad():
        full = scores()
    ft.history["finetune_gate"] = [*base, *full]
    if not (full[0] > base[0] and full[1] < base[1]):
        ft.module.zero_deep_path()
