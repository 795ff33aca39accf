"""scRobust pathway scores from the trained gene vectors (Park & Lee 2024, eqs. 16–20).

Pure computation on a :class:`~sctorch.scrobust.ScRobustModel` and prepared tokens; the
public function :func:`sctorch.tl.scrobust_pathway_scores` writes the AnnData keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._data import _Tokens


def load_gene_sets(gene_sets) -> dict[str, list[str]]:
    """``{name: [genes]}`` from a mapping, a ``.gmt``/``.json`` path or a bundled alias.

    Raises
    ------
    ValueError
        If ``gene_sets`` is neither a mapping nor a path/alias.
    FileNotFoundError
        If a gene-set file is not found.
    """
    if isinstance(gene_sets, Mapping):
        return {str(k): [str(g) for g in v] for k, v in gene_sets.items()}
    if isinstance(gene_sets, str | Path):
        from ..datasets import gene_sets as _gs

        return _gs(gene_sets)
    raise ValueError(
        "gene_sets must be a dict {name: [genes]} or the path/alias of a .gmt or "
        f".json file, got {type(gene_sets).__name__}."
    )


def usable_gene_sets(
    model, tok: _Tokens, sets: Mapping[str, Sequence[str]], min_genes: int
) -> tuple[dict[str, list[int]], list[str]]:
    """Vocabulary ids of each set's genes present in the data; sets below ``min_genes`` dropped.

    Returns
    -------
    ``({name: [token ids]}, [dropped names])``, ids de-duplicated in the set's order.

    Raises
    ------
    ValueError
        If no set keeps ``min_genes`` genes (dropped sets are counted in a warning).
    """
    in_data = {int(v) for v in tok.var_ids}
    kept: dict[str, list[int]] = {}
    dropped = []
    for name, genes in sets.items():
        ids = [int(i) for i in dict.fromkeys(model.token_ids(genes)) if i >= 0 and i in in_data]
        if len(ids) >= min_genes:
            kept[name] = ids
        else:
            dropped.append(name)
    if not kept:
        raise ValueError(
            f"None of the {len(sets)} gene sets has {min_genes} or more genes in "
            "both adata.var_names and the model vocabulary; check the gene "
            "symbols (human vs mouse) or lower min_genes."
        )
    if dropped:
        warnings.warn(
            f"{len(dropped)} gene set(s) with fewer than {min_genes} usable genes "
            f"were dropped, e.g. {dropped[:3]}.",
            UserWarning,
            stacklevel=3,
        )
    return kept, dropped


def gene_set_scores(model, tok: _Tokens, kept: Mapping[str, Sequence[int]]) -> np.ndarray:
    r"""Scores :math:`s(c_S, p_S) = c_S \cdot p_S / \lVert p_S \rVert^2` (eqs. 16–20).

    With :math:`\hat e_g` the unit-norm trained gene vectors, :math:`p_S = \sum_{g\in S}
    \hat e_g` and :math:`c_S = \sum_{g\in S} x_{cg} \hat e_g` (:math:`x` the cells'
    log-normalised expression in ``tok``).

    Returns
    -------
    ``(n_obs, len(kept))`` float32, sets in the order of ``kept``.
    """
    import torch

    col_of = {int(v): j for j, v in enumerate(tok.var_ids)}
    with torch.no_grad():
        W = torch.nn.functional.normalize(
            model.module.encoder.tokens.weight.detach().cpu().double(), dim=1
        ).numpy()
    Xc = tok.X.tocsc()
    scores = np.zeros((tok.n_obs, len(kept)), dtype=np.float32)
    for j, ids in enumerate(kept.values()):
        Ws = W[list(ids)]  # (|S|, d) unit gene vectors
        p = Ws.sum(0)
        weight = Ws @ p / (p @ p)  # c_S · p_S / |p_S|² = Σ_g x_cg (ê_g · p_S) / |p_S|²
        sub = Xc[:, [col_of[i] for i in ids]]
        scores[:, j] = np.asarray(sub @ weight).ravel()
    return scores


def h5ad_safe_names(names: Sequence[str]) -> list[str]:
    """Names usable as h5ad keys: every ``"/"`` becomes ``"_"`` (clashes get ``-1``, …).

    h5py reads ``"/"`` in a key as a path separator (``"NK/ILC"`` would come back as a
    group ``NK`` holding ``ILC``), and anndata is deprecating such keys.
    """
    out: list[str] = []
    taken = {str(n) for n in names if "/" not in str(n)}
    for n in map(str, names):
        if "/" not in n:
            out.append(n)
            continue
        base = cand = n.replace("/", "_")
        i = 0
        while cand in taken:
            i += 1
            cand = f"{base}-{i}"
        taken.add(cand)
        out.append(cand)
    return out
