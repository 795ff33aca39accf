"""stImpute's k-fold cross-validation over the shared genes (Zeng et al. 2024, §Results).

Used by :meth:`sctorch.models.StImputeModel.cross_validate` and
:func:`sctorch.tl.stimpute_cv`: every fold trains a fresh model on the other folds' genes
and predicts the fold's genes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._utils import progress_bar, resolve_device, seed_int
from ._data import check_anndata, columns, match_genes, normalised, select_genes, warn_case
from ._graph import embedding_table


def cross_validate(
    cls,
    adata_sp,
    adata_ref,
    *,
    n_folds,
    layer,
    ref_layer,
    gene_embeddings,
    device,
    rng,
    progress,
    config=None,
    **hyper,
):
    """``(per-gene scores, held-out layer, info)``; see :func:`sctorch.tl.stimpute_cv`."""
    from ..metrics import pairwise_scores

    proto, m, seed, folds = cv_plan(cls, adata_sp, adata_ref, n_folds, rng, config, hyper)
    cfg = proto.config
    norm = (
        normalised(adata_sp, layer, "adata_sp"),
        normalised(adata_ref, ref_layer, "adata_ref"),
    )
    if gene_embeddings is not None:
        embedding_table(gene_embeddings)  # refuse bad embeddings before any training
    held = [[m.shared[i] for i in te] for _, te in folds]
    for h in held:  # validate every fold before any training
        select_genes(m, [m.ref_name(g) for g in h], max(2, cfg.reliability_folds))
    dev = resolve_device(device)
    sp_pos = {g: i for i, g in enumerate(m.sp_names)}
    held_out = np.full((adata_sp.n_obs, adata_sp.n_vars), np.nan, np.float32)
    rel_all = pd.Series(np.nan, index=pd.Index(m.shared), dtype=np.float64)
    fold_of = pd.Series(0, index=pd.Index(m.shared), dtype=np.int64)
    info: dict[str, Any] = {}
    for f, h in enumerate(progress_bar(held, desc="stImpute CV", progress=progress)):
        model = cls(config=cfg)
        inputs, sim = model.prepare_inputs(
            adata_sp,
            adata_ref,
            genes=[m.ref_name(g) for g in h],
            layer=layer,
            ref_layer=ref_layer,
            gene_embeddings=gene_embeddings,
            matched=m,
            normalised_inputs=norm,
        )
        held_out[:, [sp_pos[g] for g in h]] = model.fit_inputs(
            inputs, sim, seed=seed, device=dev, progress=False
        )
        rel_all[h], fold_of[h] = model.reliability, f
        info = info or {
            **inputs.info,
            "alpha": model.alpha,
            "seed": seed,
            "device": dev,
            "k": [],
            "weight": [],
        }
        info["k"].append(model.k)
        info["weight"].append(model.alpha)
    cols = np.array([sp_pos[g] for g in m.shared])
    scores = pairwise_scores(columns(norm[0][0], cols), held_out[:, cols], axis="gene")
    scores.index = pd.Index(m.shared)
    scores["reliability"] = rel_all
    scores["fold"] = fold_of
    return scores, held_out, info


def cv_plan(cls, adata_sp, adata_ref, n_folds, rng, config, hyper):
    """Validate the CV settings; the gene folds (shuffled, seeded), before any training."""
    from sklearn.model_selection import KFold

    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
    check_anndata(adata_sp, "adata_sp")
    check_anndata(adata_ref, "adata_ref")
    if adata_sp.n_obs < 2:
        raise ValueError(
            f"adata_sp has {adata_sp.n_obs} cell; the cross-validation scores "
            "genes by their correlation across spatial cells, which needs at "
            "least 2 cells."
        )
    proto = cls(config=config, **hyper)
    m = match_genes(adata_sp, adata_ref, proto.config.case_sensitive)
    if len(m.shared) < n_folds:
        how = "exactly" if m.case_sensitive else "ignoring case"
        raise ValueError(
            f"Found {len(m.shared)} gene(s) shared by adata_sp and adata_ref "
            f"(matched {how}); {n_folds}-fold cross-validation needs at least "
            f"{n_folds}. " + m.case_hint
        )
    warn_case(m)
    seed = seed_int(rng)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**31))
    return proto, m, seed, list(kf.split(np.arange(len(m.shared))))
