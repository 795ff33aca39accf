"""scRobust settings: the network's hyper-parameters, the paper's and the default presets.

``"paper"`` is Park & Lee 2024 and the authors' code (github DMCB-GIST/scRobust): token
values ``log1p(x / library × 10⁴)``, both views drawn from the same cell at its own depth,
the checkpoint with the lowest held-out contrastive loss, a two-layer classifier on the CLS
output with fine-tuning epochs picked by validation macro-F1. ``"default"`` departs where
the benchmarks (``benchmarks/results/scrobust.md``, ``scrobust_depth.md``) showed the
paper's design losing to PCA or a linear model: views binomially thinned to independent
depths, 50 genes per view, a narrower network trained at a higher rate, the last epoch,
and a wide-and-deep classifier. Within-cell rank values and k-NN-agreement model selection
were measured and not kept (they are options).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class ScRobustConfig:
    """Hyper-parameters of a scRobust network (everything needed to rebuild it).

    ``n_layers``, ``dim_feedforward`` and ``n_genes_per_view`` may be ``None`` before
    pre-training (1 layer, or 2 for ≥ 20,000 cells; ``4 × d_model``; 10 % of the mean
    number of detected genes, at least 8); :meth:`ScRobustModel.fit` fills them in.
    ``input_scale`` is the scale of the pre-training data, ``n_classes`` the outputs of
    the fine-tuned classifier (0: none). ``token_values`` (``"log1p"``, the paper's, or
    ``"rank"``), ``view_thinning`` (``None``, the paper's, or the range of per-cell binomial
    thinning rates of pre-training views) and ``head``/``n_wide`` (the classifier layout,
    see :meth:`~sctorch.scrobust._module.ScRobustNetwork.set_classifier`) default to the
    paper's design, so models saved before these fields existed load unchanged. Fields can
    also be read as ``config["d_model"]``.
    """

    vocab_size: int = 0
    d_model: int = 512
    n_heads: int = 8
    n_layers: int | None = None
    dim_feedforward: int | None = None
    dropout: float = 0.1
    head_dropout: float = 0.3
    temperature: float = 0.07
    n_genes_per_view: int | None = None
    input_scale: str = "counts"
    n_classes: int = 0
    token_values: str = "log1p"
    view_thinning: tuple[float, float] | None = None
    head: str = "deep"
    n_wide: int = 0

    def __getitem__(self, key: str):
        """Dict-style read access (``config["d_model"]``), as the former dict config."""
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


#: pre-training length of the default preset, in cells encoded (each step encodes
#: ``batch_size`` cells): ``epochs = ceil(PRETRAIN_CELLS / n_obs)``, at most
#: ``MAX_PRETRAIN_EPOCHS``; about 5,000 steps of 64 cells whatever the number of cells
#: (``benchmarks/results/scrobust_steps.md``: 10 epochs of 2,800 PBMCs clustered below
#: PCA, 115 above it; on Zeisel 2015 both stayed below PCA).
PRETRAIN_CELLS = 320_000
MAX_PRETRAIN_EPOCHS = 200


def budget_epochs(n_obs: int) -> int:
    """Pre-training epochs of the default preset for ``n_obs`` cells (see ``PRETRAIN_CELLS``)."""
    return int(min(MAX_PRETRAIN_EPOCHS, max(1, -(-PRETRAIN_CELLS // max(int(n_obs), 1)))))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "pretrain": {
            "token_values": "log1p",
            "view_thinning": None,
            "select": "contrastive",
            "n_genes_per_view": None,
            "d_model": 512,
            "lr": 5e-5,
            "epochs": 10,
        },
        "finetune": {"head": "deep", "val_fraction": 0.1, "lr": 5e-5, "epochs": 20},
    },
    "default": {
        "pretrain": {
            "token_values": "log1p",
            "view_thinning": (0.1, 1.0),
            "select": "none",
            "n_genes_per_view": 50,
            "d_model": 64,
            "lr": 1e-3,
            "epochs": "budget",
        },
        "finetune": {"head": "wide_and_deep", "val_fraction": 0.1, "lr": 1e-3, "epochs": 10},
    },
}


def preset_values(preset: str, stage: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with each ``None`` replaced by the preset's value for ``stage``.

    ``view_thinning=False`` and ``select="none"`` switch those off explicitly.

    Raises
    ------
    ValueError
        For an unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    table = PRESETS[preset][stage]
    out = {k: (table[k] if v is None and k in table else v) for k, v in given.items()}
    if out.get("view_thinning") is False:
        out["view_thinning"] = None
    if out.get("select") == "none":
        out["select"] = None
    return out


def pretrain_config(preset: str, vocab: list[str], *, n_obs: int, **kw):
    """Validate the arguments of :func:`sctorch.tl.scrobust_pretrain`; build its config.

    Returns ``(ScRobustConfig, keyword arguments of ScRobustModel.fit plus "vocab")``.

    Raises
    ------
    ValueError
        For an unknown preset or value, a parameter out of range, ``d_model`` not divisible
        by ``n_heads`` or fewer than 2 cells.
    """
    from .._utils import check_positive

    keys = (
        "token_values",
        "view_thinning",
        "select",
        "d_model",
        "lr",
        "epochs",
        "n_genes_per_view",
    )
    p = kw | preset_values(preset, "pretrain", {k: kw[k] for k in keys})
    if p["epochs"] == "budget":
        p["epochs"] = budget_epochs(n_obs)
    check_positive(
        **{
            k: p[k]
            for k in (
                "d_model",
                "n_heads",
                "epochs",
                "batch_size",
                "lr",
                "temperature",
                "n_genes_per_view",
                "n_layers",
                "dim_feedforward",
                "patience",
            )
        }
    )
    if p["token_values"] not in ("rank", "log1p"):
        raise ValueError(f"token_values must be 'rank' or 'log1p', got {p['token_values']!r}.")
    if p["select"] not in (None, "knn", "contrastive"):
        raise ValueError(f"select must be 'knn', 'contrastive' or 'none', got {kw['select']!r}.")
    thin = p["view_thinning"]
    if thin is not None:
        thin = tuple(float(x) for x in thin)
        if len(thin) != 2 or not 0 < thin[0] <= thin[1] <= 1:
            raise ValueError(
                "view_thinning must be (low, high) with 0 < low <= high <= 1, "
                f"or False; got {kw['view_thinning']!r}."
            )
    if p["d_model"] % p["n_heads"]:
        raise ValueError(f"d_model={p['d_model']} must be divisible by n_heads={p['n_heads']}.")
    if n_obs < 2:
        raise ValueError(f"Contrastive pre-training needs at least 2 cells, got {n_obs}.")
    opt = {
        k: (None if p[k] is None else int(p[k]))
        for k in ("n_layers", "dim_feedforward", "n_genes_per_view")
    }
    config = ScRobustConfig(
        vocab_size=len(vocab),
        d_model=int(p["d_model"]),
        n_heads=int(p["n_heads"]),
        dropout=float(p["dropout"]),
        head_dropout=float(p["head_dropout"]),
        temperature=float(p["temperature"]),
        input_scale=p["input_scale"],
        token_values=p["token_values"],
        view_thinning=thin,
        **opt,
    )
    return config, {
        "vocab": vocab,
        "epochs": int(p["epochs"]),
        "lr": float(p["lr"]),
        "batch_size": int(p["batch_size"]),
        "select": p["select"],
        "patience": p["patience"],
    }
