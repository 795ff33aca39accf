"""stImpute training steps, each one call of :func:`sctorch.models.fit`.

Zeng et al. 2024, Commun Biol 7:1271, §Methods: autoencoder pre-training (eqs. 1–3), the
GNN E-step (eqs. 7–10), the autoencoder M-step (eq. 11), the blend (eq. 12) and the
reliability MLP (eq. 13). The steps draw their randomness from the caller's seeded
torch generator (weights) and from :meth:`CellData.epoch_cells` (cell order); the caller
(:class:`~sctorch.stimpute._model.StImputeModel`) runs them inside ``seeded(seed)``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._utils import iter_batches, to_dense
from ..models import LossOutput, fit
from . import _transfer as X
from ._data import CellData

_TG_HINT = (
    "stImpute needs torch-geometric (torch_geometric.nn.SAGEConv). Install it with "
    "`pip install torch-geometric`."
)
RELIABILITY_MAX_CELLS = 4096
_EMBED_BATCH = 8192


def torch_modules():
    """:mod:`sctorch.stimpute._module`, imported lazily with an install hint.

    Importing torch-geometric calls ``torch.jit.script`` at import time (in
    ``torch_geometric.nn.pool``), which recent torch reports with a deprecation warning
    that is not the user's concern; it is silenced here, for this import only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
        try:
            import torch_geometric  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(_TG_HINT) from err
        from . import _module
    return _module


def _mse(a, b):
    import torch

    return torch.nn.functional.mse_loss(a, b)


# ----------------------------------------------------------------------------- losses
# One function per training step, each returning the typed record that fit() reads; the
# values recorded are the epoch means of ``loss`` (``history[f"{prefix}_loss"]``).
def autoencoder_loss(ae, x) -> LossOutput:
    """Eqs. 1–3: MSE between the spatial cells ``x`` ``(n, n_train)`` and their reconstruction."""
    _, rec = ae(x)
    return LossOutput(_mse(rec, x))


def refit_loss(ae, gnn_out, y) -> LossOutput:
    """Eq. 11 (M-step): MSE between ``(AE output + GNN output) / 2`` and the measured ``y``."""
    _, rec = ae(y)
    return LossOutput(_mse((rec + gnn_out) / 2, y))


def gnn_loss(gnn, x, adj, y, cosine_weight: float) -> LossOutput:
    """Eq. 10 (E-step): MSE + ``cosine_weight`` × cosine losses of the GNN's output for ``y``."""
    from ._module import imputation_loss  # imported with the GNN (torch_modules)

    return LossOutput(imputation_loss(gnn(x, adj), y, cosine_weight))


def reliability_loss(mlp, profiles, target) -> LossOutput:
    """Eq. 13 (authors' code): MSE between the MLP's scores of gene ``profiles`` and ``target``."""
    return LossOutput(_mse(mlp(profiles), target))


# ----------------------------------------------------------------------------- autoencoder
def train_autoencoder(data: CellData, cfg, history: dict, bar):
    """Pre-train the cell autoencoder (eqs. 1–3) on the spatial training genes.

    Adam (lr 1e-2, weight decay 1e-4, as the authors' code), MSE reconstruction, batches
    of ``cfg.batch_size`` cells. Returns ``(autoencoder, optimiser)``; the optimiser (and
    its moments) is reused by the M-steps.
    """
    import torch

    ae = torch_modules().CellAutoEncoder(data.n_train, cfg.latent_dim).to(data.device)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2, weight_decay=1e-4)

    def loss(cells):
        return autoencoder_loss(ae, data.sp_rows(cells))

    fit(
        ae,
        loss,
        data.epoch_batches(cfg.batch_size),
        epochs=cfg.ae_epochs,
        optimizer=opt,
        history=history,
        prefix="autoencoder",
        desc="stImpute autoencoder",
        bar=bar,
    )
    return ae, opt


def embed(data: CellData, ae, *, reference: bool):
    """AE embedding ``(n, latent_dim)`` of the spatial cells or of the reference cells."""
    import torch

    n = data.n_ref if reference else data.n_sp
    tr = np.arange(data.n_train)
    ae.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                ae.encode(
                    data.ref_rows(np.arange(sl.start, sl.stop), tr)
                    if reference
                    else data.sp_rows(np.arange(sl.start, sl.stop))
                )
                .float()
                .cpu()
                .numpy()
                for sl in iter_batches(n, _EMBED_BATCH)
            ]
        )


def cell_neighbours(data: CellData, ae) -> np.ndarray:
    """Neighbours of the spatial cells of ``data`` in the AE space (see :func:`neighbours`)."""
    emb_sp = embed(data, ae, reference=False)
    return X.neighbours(embed(data, ae, reference=True), emb_sp, data.k)


def refit_autoencoder(data: CellData, ae, opt, gnn, nbr, cfg, history: dict, bar) -> None:
    """M-step (eq. 11): refit the AE so that (AE output + GNN output) / 2 matches.

    The GNN is frozen (run under ``torch.no_grad`` inside the loss); only the AE's
    parameters are updated, with the pre-training optimiser ``opt``.
    """
    import torch

    cols = np.arange(data.n_train)
    adj = data.adjacency(cols)
    gnn.eval()

    def loss(cells):
        y = data.sp_rows(cells)
        with torch.no_grad():
            g = gnn(data.features(cells, cols, nbr), adj)
        return refit_loss(ae, g, y)

    fit(
        ae,
        loss,
        data.epoch_batches(data.batch_size(data.n_train)),
        epochs=cfg.epochs,
        optimizer=opt,
        history=history,
        prefix="autoencoder_refit",
        desc="stImpute autoencoder refit",
        bar=bar,
    )


# ----------------------------------------------------------------------------- GNN
def gnn_module(cfg, k: int):
    """An untrained :class:`GeneSAGE` for ``k`` neighbours (sum aggregation for the paper)."""
    return torch_modules().GeneSAGE(
        k,
        dim=cfg.gnn_dim,
        n_layers=cfg.gnn_layers,
        hidden_dim=cfg.hidden_dim,
        aggr="sum" if cfg.design == "paper" else "mean",
    )


def new_gnn(cfg, k: int, device):
    """A fresh :class:`GeneSAGE` and its Adam optimiser (``cfg.lr``, ``cfg.weight_decay``)."""
    import torch

    gnn = gnn_module(cfg, k).to(device)
    return gnn, torch.optim.Adam(gnn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_gnn(
    data: CellData, gnn, opt, cols: np.ndarray, nbr, cfg, history: dict, bar, prefix: str = "gnn"
) -> None:
    """E-step: fit the GNN to the measured spatial values of training genes ``cols`` (eq. 10)."""
    adj = data.adjacency(cols)

    def loss(cells):
        x = data.features(cells, cols, nbr)
        y = data.sp_rows(cells)[:, cols]
        return gnn_loss(gnn, x, adj, y, cfg.cosine_weight)

    fit(
        gnn,
        loss,
        data.epoch_batches(data.batch_size(len(cols))),
        epochs=cfg.epochs,
        optimizer=opt,
        history=history,
        prefix=prefix,
        desc="stImpute GNN",
        bar=bar,
    )


def blend(
    data: CellData,
    gnn,
    nbr,
    cols: np.ndarray,
    out: np.ndarray,
    alpha: float,
    paper_scale: float | None = None,
) -> np.ndarray:
    """Eq. 12 for genes ``cols[out]``, graph over all ``cols``: ``(n_sp, len(out))`` float32.

    ``alpha`` · GNN + (1 − ``alpha``) · mean of the k neighbours' expression. With
    ``paper_scale`` (``design="paper"``) the k-NN mean of each gene is first divided by its
    maximum over the spatial cells and multiplied by ``paper_scale`` (the network's largest
    prediction at fit), as the authors' code does (``mid / mid.max() * pre.max()``).
    """
    import torch

    if paper_scale is not None:
        knn = blend(data, gnn, nbr, cols, out, 0.0)
        peak = knn.max(0) if len(knn) else np.ones(knn.shape[1], np.float32)
        knn = knn / np.where(peak > 0, peak, 1.0) * paper_scale
        net = blend(data, gnn, nbr, cols, out, 1.0) if alpha > 0 else 0.0
        return (alpha * net + (1 - alpha) * knn).astype(np.float32)

    adj = data.adjacency(cols)
    res = np.empty((data.n_sp, len(out)), np.float32)
    out_t = torch.as_tensor(out, device=data.device)
    gnn.eval()
    with torch.no_grad():
        for sl in iter_batches(data.n_sp, data.batch_size(len(cols))):
            x = data.features(np.arange(sl.start, sl.stop), cols, nbr)
            mean = x[:, out_t].mean(-1)
            if alpha >= 1:
                pred = gnn(x, adj)[:, out_t]
            elif alpha > 0:
                pred = alpha * gnn(x, adj)[:, out_t] + (1 - alpha) * mean
            else:
                pred = mean
            res[sl] = pred.float().cpu().numpy()
    return res


def network_max(data: CellData, gnn, nbr) -> float:
    """The network's largest prediction over the spatial cells and all genes (paper blend)."""
    n_all = data.n_all
    net = blend(data, gnn, nbr, np.arange(n_all), np.arange(data.n_train, n_all), 1.0)
    return float(net.max()) if net.size else 1.0


# ----------------------------------------------------------------------------- reliability
def _out_of_fold(
    data: CellData, nbr, cfg, alpha: float, seed: int, history: dict, bar
) -> np.ndarray:
    """``(n_sp, n_train)``: each training gene predicted by a GNN trained without its fold."""
    from sklearn.model_selection import KFold

    n_folds = min(cfg.reliability_folds, data.n_train)
    oof = np.empty((data.n_sp, data.n_train), np.float32)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**31))
    for tr, te in kf.split(np.arange(data.n_train)):
        gnn, opt = new_gnn(cfg, data.k, data.device)
        if alpha > 0:
            train_gnn(data, gnn, opt, tr, nbr, cfg, history, bar, prefix="reliability_gnn")
        cols = np.concatenate([tr, te])
        oof[:, te] = blend(data, gnn, nbr, cols, np.arange(len(tr), len(cols)), alpha)
    return oof


def _measured(data: CellData) -> np.ndarray:
    return np.concatenate([to_dense(data.sp[sl]) for sl in iter_batches(data.n_sp, 8192)])


def _cosine_per_gene(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    num = (pred * measured).sum(0)
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(measured, axis=0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


def _reference(data: CellData):
    """The whole stored reference (n_ref × n_all) as a CSR or dense array."""
    return data.ref if data.ref is not None else data.ref_t.cpu().numpy()


def reliability_heldout(
    data: CellData,
    nbr,
    cfg,
    alpha: float,
    seed: int,
    history: dict,
    bar,
    emb_ref: np.ndarray,
    cells: np.ndarray,
) -> np.ndarray:
    """Reliability of the targets, calibrated on the training genes' held-out Pearson.

    Each of ``cfg.reliability_folds`` folds trains a fresh GNN on the other training genes
    (same neighbours) and predicts the fold's genes; a factor ≥ 0 (a line through the
    origin, :func:`._transfer.calibrate`) maps each training gene's reference
    self-prediction (:func:`._transfer.self_prediction`, in the autoencoder space,
    reference ``cells``) to its held-out Pearson; applied to the targets'
    self-prediction. Returns ``(n_targets,)`` float32 in [-1, 1].
    """
    oof = _out_of_fold(data, nbr, cfg, alpha, seed, history, bar)
    held = X.gene_pearson(oof, _measured(data))
    feat = X.self_prediction(emb_ref, _reference(data), data.k, cells)
    calib = X.calibrate(feat[: data.n_train], held)
    return X.reliability_score(feat[data.n_train :], calib)


def reliability_in_sample(
    data: CellData, gnn, nbr, cfg, seed: int, history: dict, bar
) -> np.ndarray:
    """Eq. 13 as in the authors' code (``design="paper"``): an MLP on in-sample accuracy.

    The trained network predicts every gene; the cosine similarity of its (in-sample)
    predictions of the training genes with their measured values is the target of an MLP
    that reads a gene's predicted profile (over all spatial cells, or a seeded subset of
    4,096); the MLP is trained full-batch for ``cfg.reliability_epochs`` epochs of
    :func:`~sctorch.models.fit` (Adam, lr 1e-3, weight decay 1e-2) and scores the targets.
    Its output is clipped to [-1, 1]. Returns ``(n_targets,)`` float32.
    """
    import torch

    n_all = data.n_all
    net = blend(data, gnn, nbr, np.arange(n_all), np.arange(n_all), 1.0)
    cos = _cosine_per_gene(net[:, : data.n_train], _measured(data))
    cells = np.arange(data.n_sp)
    if data.n_sp > RELIABILITY_MAX_CELLS:
        cells = np.sort(
            np.random.default_rng(seed).choice(data.n_sp, RELIABILITY_MAX_CELLS, replace=False)
        )
    torch.manual_seed(seed)  # inside the caller's seeded() block: restored on exit
    mlp = torch_modules().ReliabilityMLP(len(cells)).to(data.device)
    Xt = torch.as_tensor(net[cells][:, : data.n_train].T.copy(), device=data.device)
    y = torch.as_tensor(cos, device=data.device)
    fit(
        mlp,
        lambda batch: reliability_loss(mlp, batch[0], batch[1]),
        lambda _epoch: [(Xt, y)],
        epochs=cfg.reliability_epochs,
        lr=1e-3,
        weight_decay=1e-2,
        history=history,
        prefix="reliability",
        desc="stImpute reliability",
        bar=bar,
    )
    with torch.no_grad():
        rel = mlp(torch.as_tensor(net[cells][:, data.n_train :].T.copy(), device=data.device))
    return rel.clamp(-1.0, 1.0).float().cpu().numpy().astype(np.float32)
