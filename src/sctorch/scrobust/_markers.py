"""scRobust marker genes from the CLS-to-gene attention of the last encoder layer.

Pure computation on a :class:`~sctorch.scrobust.ScRobustModel` and prepared tokens; the
public function :func:`sctorch.tl.scrobust_marker_genes` validates and writes the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._utils import check_not_empty, iter_batches, make_params, progress_bar, resolve_device
from ._data import _Tokens, _unique_rank


def check_groups(adata, groupby: str):
    """``(groups as str Series, sorted group names)``; refuses a missing key, NaN, one group."""
    check_not_empty(adata)
    if groupby not in adata.obs:
        raise KeyError(
            f"groupby {groupby!r} not found in adata.obs (columns: {list(adata.obs.columns)})."
        )
    groups = adata.obs[groupby]
    if groups.isna().any():
        raise ValueError(f"adata.obs[{groupby!r}] has {int(groups.isna().sum())} NaN value(s).")
    groups = groups.astype(str)
    names = sorted(groups.unique())
    if len(names) < 2:
        raise ValueError(f"adata.obs[{groupby!r}] has a single group; markers need at least 2.")
    return groups, names


def group_attention(
    model,
    tok: _Tokens,
    code,
    n_groups: int,
    *,
    n_tokens: int,
    batch_size: int,
    device,
    progress: bool,
):
    """Summed CLS attention per group and token, ``(n_groups, len(vocab))`` float64 tensor.

    Every cell is encoded from its ``n_tokens`` highly unique genes (rarest detected in
    ``tok`` first); the head-averaged attention of the CLS query over its tokens in the
    last layer is added to its group's row (``code``: group index per cell, int64
    tensor). The CLS token's attention to itself is left out.
    """
    import torch

    V = len(model.genes)
    net = model.module
    net.eval()
    acc = torch.zeros(n_groups, V, dtype=torch.float64)
    rank = _unique_rank(tok.detection(V))
    batcher = model.batcher(tok, device)
    with torch.inference_mode():
        for sl in progress_bar(
            list(iter_batches(tok.n_obs, batch_size)), desc="attention", progress=progress
        ):
            rows = torch.arange(sl.start, sl.stop)
            ids, vals, pad = batcher.select(rows, n_tokens, rank=rank)
            w = net.encoder.cls_attention(ids, vals, pad).double().cpu()
            ids = ids.cpu()
            w[:, 0] = 0.0  # the CLS token itself
            flat = code[rows][:, None] * V + ids
            acc.view(-1).index_add_(0, flat.reshape(-1), w.reshape(-1))
    return acc


def marker_record(
    acc,
    code,
    tok: _Tokens,
    vocab: Sequence[str],
    names: Sequence[str],
    *,
    n_genes: int,
    method: str,
) -> dict[str, np.ndarray]:
    """``rank_genes_groups``-like record arrays from the summed attention ``acc``.

    ``"specific"``: score = group mean minus the mean over all other cells; ``"mean"``:
    the group mean. ``logfoldchanges`` is the log2 ratio of group to rest mean attention;
    ``pvals``/``pvals_adj`` are NaN (attention gives no test).
    """
    import torch

    counts = torch.bincount(code, minlength=len(names)).double()
    total = acc.sum(0)
    mean_in = (acc / counts[:, None]).numpy()
    mean_out = ((total[None] - acc) / (len(code) - counts)[:, None]).numpy()
    gene_ids = tok.var_ids
    gene_names = np.asarray([vocab[i] for i in gene_ids], dtype=object)
    eps = 1e-9
    k = min(n_genes, len(gene_ids))
    rec = {f: [] for f in ("names", "scores", "logfoldchanges")}
    for g in range(len(names)):
        s = mean_in[g, gene_ids] - (mean_out[g, gene_ids] if method == "specific" else 0.0)
        top = np.argsort(-s, kind="stable")[:k]
        rec["names"].append(gene_names[top].astype(str))
        rec["scores"].append(s[top].astype(np.float32))
        rec["logfoldchanges"].append(
            np.log2((mean_in[g, gene_ids[top]] + eps) / (mean_out[g, gene_ids[top]] + eps))
        )
    result = {f: np.rec.fromarrays(v, names=list(names)) for f, v in rec.items()}
    nan = np.full(k, np.nan)
    result["pvals"] = np.rec.fromarrays([nan] * len(names), names=list(names))
    result["pvals_adj"] = np.rec.fromarrays([nan] * len(names), names=list(names))
    return result


def attention_markers(
    adata,
    groupby: str,
    model,
    *,
    n_genes: int,
    n_tokens: int,
    layer,
    input_scale: str,
    method: str,
    batch_size: int,
    device,
    progress: bool,
) -> dict:
    """The ``rank_genes_groups``-like record of :func:`sctorch.tl.scrobust_marker_genes`."""
    import pandas as pd
    import torch

    groups, names = check_groups(adata, groupby)
    tok = model.tokens(adata, layer=layer, input_scale=input_scale, min_shared_genes=1)
    dev = resolve_device(device)
    model.to(dev)
    code = torch.as_tensor(
        np.array(pd.Categorical(groups, categories=names).codes), dtype=torch.long
    )
    acc = group_attention(
        model,
        tok,
        code,
        len(names),
        n_tokens=n_tokens,
        batch_size=batch_size,
        device=dev,
        progress=progress,
    )
    result = marker_record(acc, code, tok, model.vocab, names, n_genes=n_genes, method=method)
    result["params"] = {
        "groupby": groupby,
        "reference": "rest",
        "method": "scrobust_attention",
        "use_raw": False,
        "layer": "None" if layer is None else layer,
        "corr_method": "none",
        **make_params(n_tokens=n_tokens, aggregation=method, device=str(dev)),
    }
    return result
