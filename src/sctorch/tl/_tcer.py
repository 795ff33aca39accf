"""TCER: self-supervised ER-Net imputation on GenoMaps (Wei et al. 2024, bbae031)."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_cell_totals,
    check_counts,
    check_unique_var_names,
    describe_source,
    get_matrix,
    get_rng,
    iter_batches,
    log_normalize,
    make_params,
    progress_bar,
    resolve_device,
    seed_int,
)

logger = logging.getLogger("sctorch")

PLACEHOLDER = -1.0  # δ: below every (non-negative, scaled) expression value

PRESETS: dict[str, dict[str, Any]] = {
    # laptop CPU: narrow network, early stopping on a held-out masked loss
    "fast": {"n_features": 16, "epochs": 30, "lr": 1e-3, "lr_step": 10, "patience": 5,
             "objective": "blind_spot", "observed_weight": 1.0},
    # the paper's settings: F = 64, 100 epochs, lr halved every 40 epochs, its masking
    # scheme, measured non-zeros kept
    "paper": {"n_features": 64, "epochs": 100, "lr": 1e-3, "lr_step": 40, "patience": None,
              "objective": "dropout", "observed_weight": 1.0},
}


@dataclass
class _Placement:
    """Where each gene sits on the GenoMap: flat pixel index per placed gene."""

    genes: list[str]
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    @property
    def flat(self) -> np.ndarray:
        return self.rows * self.shape[1] + self.cols

    def images(self, X) -> np.ndarray:
        """Rows of a (cells × genes) block → float32 images ``(n, H, W)``, empty pixels 0."""
        Xd = X.toarray() if sparse.issparse(X) else np.asarray(X)
        out = np.zeros((Xd.shape[0], self.shape[0] * self.shape[1]), dtype=np.float32)
        out[:, self.flat] = Xd
        return out.reshape(-1, *self.shape)

    def genes_of(self, images: np.ndarray) -> np.ndarray:
        """Images ``(n, H, W)`` → (n × genes), the exact inverse of :meth:`images`."""
        return images.reshape(images.shape[0], -1)[:, self.flat]

    def pixel_mask(self) -> np.ndarray:
        m = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        m[self.flat] = True
        return m.reshape(self.shape)


def _placement_from_adata(adata: ad.AnnData, key: str) -> _Placement:
    """Read the GenoMap placement ``key`` (validated by ``placement_index``); all genes placed."""
    from ._genomap import placement_index

    rows, cols, shape = placement_index(adata, key)
    if (rows < 0).any():
        raise ValueError(f"GenoMap {key!r} leaves {int((rows < 0).sum())} gene(s) of adata "
                         "unplaced; TCER needs every gene on the map. Subset adata to the "
                         "placed genes or rebuild the GenoMap on all genes.")
    return _Placement(list(map(str, adata.var_names)), rows, cols, shape)


@dataclass
class TCERParams:
    """Hyper-parameters of a TCER model (recorded in ``uns['tcer']['params']`` and on save)."""

    n_features: int = 16
    n_dfa: int = 3
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lr_step: int = 10
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    fft_weight: float = 0.1
    patience: int | None = 5
    validation_fraction: float = 0.1
    target_sum: float = 1e4
    observed_weight: float = 1.0
    objective: str = "blind_spot"
    extra: dict[str, Any] = field(default_factory=dict)


class TCERModel:
    """A trained TCER model: ER-Net weights, the GenoMap placement and the gene list.

    Create one with ``sctorch.tl.tcer_impute(..., return_model=True)``; reuse it on
    new cells with :meth:`impute`; store it with :meth:`save` / :meth:`load`.

    Attributes
    ----------
    params
        :class:`TCERParams` used for training.
    placement
        Gene → pixel placement (``genes``, ``rows``, ``cols``, ``shape``).
    scale
        Divisor that maps log-normalised values to the network's input range.
    history
        ``{"train_loss": [...], "val_loss": [...]}`` per epoch.
    """

    def __init__(self, net, placement: _Placement, params: TCERParams, scale: float,
                 history: dict[str, list[float]] | None = None):
        self.net = net
        self.placement = placement
        self.params = params
        self.scale = float(scale)
        self.history = history or {"train_loss": [], "val_loss": []}

    # ------------------------------------------------------------------ inference
    def _predict_images(self, imgs: np.ndarray, device) -> np.ndarray:
        """Recover scaled images ``(n, H, W)``.

        ``objective="dropout"``: zero gene pixels get the placeholder and are predicted.
        ``"blind_spot"``: every gene pixel is predicted while hidden, in
        ``ceil(1 / mean ratio)`` passes over disjoint pixel groups (a fixed pattern, so
        results are deterministic). Either way an observed non-zero ``x`` becomes
        ``w·x + (1 − w)·prediction`` with ``w = observed_weight``.
        """
        import torch

        gene_px = torch.as_tensor(self.placement.pixel_mask(), device=device)
        x = torch.as_tensor(imgs, device=device)
        self.net.eval()
        if self.params.objective == "blind_spot":
            k = int(np.ceil(2.0 / sum(self.params.mask_ratio)))
            H, W = self.placement.shape
            group = torch.as_tensor(
                np.random.default_rng(0).integers(0, k, size=(H, W)), device=device)
            pred = torch.zeros_like(x)
            with torch.no_grad():
                for g in range(k):
                    hide = gene_px & (group == g)
                    inp = torch.where(hide, torch.full_like(x, PLACEHOLDER), x)
                    out = self.net(inp[:, None]).squeeze(1).clamp_min(0.0)
                    pred = torch.where(hide, out, pred)
        else:
            zero = gene_px & (x <= 0)
            inp = torch.where(zero, torch.full_like(x, PLACEHOLDER), x)
            with torch.no_grad():
                pred = self.net(inp[:, None]).squeeze(1).clamp_min(0.0)
        w = self.params.observed_weight
        pred = torch.where(x > 0, w * x + (1.0 - w) * pred, pred)
        pred = torch.where(gene_px, pred, torch.zeros_like(pred))
        return pred.cpu().numpy()

    def impute(self, adata: ad.AnnData, *, layer: str | None = None, batch_size: int = 256,
               device: str | None = None, key_added: str = _keys.TCER, progress: bool = True,
               copy: bool = False) -> ad.AnnData | None:
        """Impute cells (seen in training or new) with this model.

        Parameters
        ----------
        adata
            Cells × genes of **raw counts**. Genes are matched to the model's gene list by
            name: model genes missing from ``adata`` are treated as unobserved (zero) and
            reported in a warning; genes the model does not know keep their
            log-normalised observed values.
        layer
            Layer holding the counts (``None``: ``adata.X``).
        batch_size
            Cells per inference batch.
        device
            Torch device (``None``: CUDA, MPS, else CPU).
        key_added
            Output layer name.
        progress
            Show a progress bar.
        copy
            Return a copy instead of writing into ``adata``.

        Returns
        -------
        ``None`` or a copy, with ``layers[key_added]``: dense float32 ``n_obs × n_vars``
        on the **log1p-normalised** scale (``log1p(counts / library × target_sum)``).

        Raises
        ------
        ValueError
            If the input is not raw counts, a cell has zero counts, or ``adata`` shares
            fewer than half of the model's genes (says how many).
        """
        check_unique_var_names(adata)
        model_genes = self.placement.genes
        pos = adata.var_names.get_indexer(model_genes)
        n_shared = int((pos >= 0).sum())
        if n_shared < 0.5 * len(model_genes):
            raise ValueError(f"adata shares {n_shared} of the model's {len(model_genes)} genes "
                             "(matched by var_names); at least half are needed. Check that "
                             "var_names use the same gene symbols as the training data.")
        X = get_matrix(adata, layer)
        what = describe_source(layer)
        check_counts(X, what=what)
        check_cell_totals(X, what=what)
        if n_shared < len(model_genes):
            warnings.warn(f"{len(model_genes) - n_shared} of the model's {len(model_genes)} genes "
                          "are missing from adata; they are treated as not detected.",
                          UserWarning, stacklevel=2)
        dev = resolve_device(device)
        self.net.to(dev)
        Xlog = sparse.csr_matrix(log_normalize(X, target_sum=self.params.target_sum))
        out = Xlog.toarray().astype(np.float32)  # unknown genes keep observed values
        shared = np.flatnonzero(pos >= 0)
        src_cols = pos[shared]
        for sl in progress_bar(list(iter_batches(adata.n_obs, batch_size)), desc="TCER impute",
                               progress=progress):
            block = np.zeros((sl.stop - sl.start, len(model_genes)), dtype=np.float32)
            block[:, shared] = Xlog[sl][:, src_cols].toarray() / self.scale
            pred = self._predict_images(self.placement.images(block), dev)
            out[sl, src_cols] = self.placement.genes_of(pred)[:, shared] * self.scale
        target = adata.copy() if copy else adata
        target.layers[key_added] = out
        return target if copy else None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the model to one ``.safetensors`` file (weights + JSON metadata).

        The file holds the ER-Net weights, the placement (genes, rows, cols, shape), the
        hyper-parameters, the input scale, the loss history and the sctorch version.
        """
        from safetensors.torch import save_file

        from .. import __version__

        meta = {
            "format": "sctorch.TCERModel/1",
            "sctorch_version": __version__,
            "params": json.dumps(asdict(self.params)),
            "genes": json.dumps(self.placement.genes),
            "shape": json.dumps(list(self.placement.shape)),
            "scale": repr(self.scale),
            "history": json.dumps(self.history),
        }
        tensors = {f"net.{k}": v.detach().cpu().contiguous()
                   for k, v in self.net.state_dict().items()}
        import torch

        tensors["placement.rows"] = torch.as_tensor(self.placement.rows, dtype=torch.int64)
        tensors["placement.cols"] = torch.as_tensor(self.placement.cols, dtype=torch.int64)
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> TCERModel:
        """Read a model written by :meth:`save` (safetensors: no code is executed).

        Raises
        ------
        ValueError
            If the file is not a sctorch TCER model.
        """
        from safetensors import safe_open

        from ..nn._ernet import ERNet

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != "sctorch.TCERModel/1":
                raise ValueError(f"{path} is not a sctorch TCER model file "
                                 f"(format={meta.get('format')!r}).")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        pdict = json.loads(meta["params"])
        pdict["mask_ratio"] = tuple(pdict["mask_ratio"])
        params = TCERParams(**pdict)
        placement = _Placement(json.loads(meta["genes"]), tensors["placement.rows"].numpy(),
                               tensors["placement.cols"].numpy(),
                               tuple(json.loads(meta["shape"])))
        net = ERNet(params.n_features, params.n_dfa)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.to(resolve_device(device))
        return cls(net, placement, params, float(meta["scale"]), json.loads(meta["history"]))


# ---------------------------------------------------------------------- training pieces
def mask_nonzero(x, ratio_low: float, ratio_high: float, gene_px, generator):
    """Self-supervised masking of a batch of GenoMaps (TCER eqs. 12–13).

    For each image a dropout ratio ``r ~ U[ratio_low, ratio_high]`` is drawn and
    ``round(r × n_nonzero)`` of its non-zero gene pixels are chosen at random. The input
    has the placeholder δ on those pixels *and* on every zero gene pixel (eq. 13: a zero
    is unknown — a dropout or a true zero); pixels with no gene (padding, unused grid
    cells) are never masked and stay 0.

    Parameters
    ----------
    x
        Tensor ``(B, H, W)`` of scaled log-normalised images (≥ 0).
    ratio_low, ratio_high
        Range of the per-image dropout ratio.
    gene_px
        Bool tensor ``(H, W)``: pixels that hold a gene.
    generator
        ``torch.Generator`` for reproducible masks.

    Returns
    -------
    ``(inputs, masked)``: the masked input ``(B, H, W)`` and the bool tensor of the
    non-zero pixels that were hidden.
    """
    import torch

    B = x.shape[0]
    nonzero = (x > 0) & gene_px
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(B, generator=generator,
                                                            device=x.device)
    k = torch.round(r * nonzero.flatten(1).sum(1)).long()  # (B,)
    scores = torch.rand(x.shape, generator=generator, device=x.device)
    scores = torch.where(nonzero, scores, torch.full_like(scores, 2.0)).flatten(1)
    rank = scores.argsort(dim=1).argsort(dim=1)
    masked = (rank < k[:, None]).reshape(x.shape) & nonzero
    hidden = masked | (gene_px & ~nonzero)
    inputs = torch.where(hidden, torch.full_like(x, PLACEHOLDER), x)
    return inputs, masked


def mask_blind_spot(x, ratio_low: float, ratio_high: float, gene_px, generator):
    """Blind-spot masking: hide a random fraction ``r`` of *all* gene pixels, zero or not.

    The alternative objective of :func:`tcer_impute` (``objective="blind_spot"``): the
    hidden pixels (placeholder δ in the input) are the training targets with their
    observed values, zeros included, so the network learns the conditional expectation
    of each pixel given the rest of the GenoMap (Noise2Self, Batson & Royer 2019).

    Returns
    -------
    ``(inputs, hidden)`` as for :func:`mask_nonzero`.
    """
    import torch

    B = x.shape[0]
    r = ratio_low + (ratio_high - ratio_low) * torch.rand(B, generator=generator,
                                                            device=x.device)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    hidden = (u < r[:, None, None]) & gene_px
    inputs = torch.where(hidden, torch.full_like(x, PLACEHOLDER), x)
    return inputs, hidden


def tcer_loss(pred, target, known, fft_weight: float, *, squared: bool = False):
    """L1 in the spatial domain plus ``fft_weight`` × L1 between 2-D FFTs (TCER eqs. 14–16).

    Both terms compare the prediction with the observed values on the ``known`` pixels
    (``objective="dropout"``: the non-zero gene pixels of the observed GenoMap, masked or
    not, since observed zeros may be dropouts; ``"blind_spot"``: the hidden pixels).
    ``squared=True`` uses the squared error in the spatial term.
    """
    import torch

    known_f = known.to(pred.dtype)
    n = known_f.sum().clamp_min(1.0)
    err = (pred - target) ** 2 if squared else torch.abs(pred - target)
    spatial = (err * known_f).sum() / n
    if fft_weight <= 0:
        return spatial
    fp = torch.fft.rfft2(pred * known_f)
    ft = torch.fft.rfft2(target * known_f)
    freq = torch.abs(fp - ft).mean()
    return spatial + fft_weight * freq


def _train(net, images_of, train_idx, val_idx, placement, p: TCERParams, device, seed: int,
           progress: bool) -> dict[str, list[float]]:
    """Train ER-Net on the observed data only; keep the weights of the best validation epoch."""
    import copy

    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    rng = np.random.default_rng(seed)
    blind = p.objective == "blind_spot"
    masker = mask_blind_spot if blind else mask_nonzero
    gene_px = torch.as_tensor(placement.pixel_mask())
    opt = torch.optim.Adam(net.parameters(), lr=p.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(p.lr_step, 1), gamma=0.5)

    # fixed validation masks: the held-out masked loss is comparable across epochs
    val_batches = []
    for sl in iter_batches(len(val_idx), 256):
        x = torch.as_tensor(images_of(val_idx[sl]))
        inp, masked = masker(x, *p.mask_ratio, gene_px, gen)
        val_batches.append((inp, x, masked))

    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best, best_state, stale = np.inf, None, 0
    bar = progress_bar(range(p.epochs), desc="TCER train", progress=progress)
    for _epoch in bar:
        net.train()
        order = rng.permutation(train_idx)
        losses = []
        for sl in iter_batches(len(order), p.batch_size):
            x = torch.as_tensor(images_of(order[sl]))
            inp, hidden = masker(x, *p.mask_ratio, gene_px, gen)
            x, inp, hidden = x.to(device), inp.to(device), hidden.to(device)
            pred = net(inp[:, None]).squeeze(1)
            known = hidden if blind else (x > 0) & gene_px.to(device)
            loss = tcer_loss(pred, x, known, p.fft_weight, squared=blind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        history["train_loss"].append(float(np.mean(losses)))
        if val_batches:
            net.eval()
            num = den = 0.0
            with torch.no_grad():
                for inp, x, masked in val_batches:
                    pred = net(inp.to(device)[:, None]).squeeze(1).cpu()
                    err = (pred - x) ** 2 if blind else torch.abs(pred - x)
                    num += float((err * masked).sum())
                    den += float(masked.sum())
            val = num / max(den, 1.0)
            history["val_loss"].append(val)
            bar.set_postfix(train=f"{history['train_loss'][-1]:.4f}", val=f"{val:.4f}")
            if val < best - 1e-5:
                best, stale = val, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if p.patience is not None and stale >= p.patience:
                    logger.info("TCER: early stop after %d epochs", _epoch + 1)
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    return history


def tcer_impute(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genomap_key: str = _keys.GENOMAP,
    preset: str = "fast",
    n_features: int | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    lr_step: int | None = None,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    fft_weight: float = 0.1,
    patience: int | str | None = "preset",
    validation_fraction: float = 0.1,
    observed_weight: float | None = None,
    objective: str | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.TCER,
    progress: bool = True,
    return_model: bool = False,
    copy: bool = False,
):
    """Impute dropouts with TCER: a self-supervised ER-Net on GenoMap images.

    Wei et al. 2024, Brief Bioinform 25(2):bbae031. The cells' log-normalised
    expression is laid out as GenoMap images (§GenoMap Construction; built with
    :func:`sctorch.tl.genomap` if ``adata`` has none) and ER-Net
    (:class:`sctorch.nn._ernet.ERNet`, §ER-Net, Figure 9) is trained on the **observed
    data only** to recover pixels hidden behind the placeholder δ = -1 (eqs. 12–16),
    with an L1-type spatial loss plus ``fft_weight`` × L1 between 2-D FFTs. A held-out
    ``validation_fraction`` of cells, with fixed masks, gives the masked loss used for
    early stopping and to keep the best weights; the reference (ground truth) is never
    used. Two masking objectives are available:

    - ``"dropout"`` (the paper's, eqs. 12–13; ``preset="paper"``): per image a ratio
      ``r ~ U(mask_ratio)`` of its non-zero pixels *and* all its zero pixels get δ; the
      L1 loss is taken on the observed non-zero pixels. The network thus predicts the
      value a gene would have *if detected*; at 0.5 % efficiency this inflates every
      zero to a detected-level value and lowered the gene Pearson below the observed
      data in our runs (see ``benchmarks/results/tcer.md``).
    - ``"blind_spot"`` (default): a ratio ``r`` of *all* gene pixels, zeros included,
      get δ and are learned with their observed values (Noise2Self, Batson & Royer
      2019) with a squared spatial error, because the L1 minimiser is the conditional
      median, which is 0 wherever a gene is detected in fewer than half of similar
      cells. Every pixel is predicted while hidden.

    Output: a zero pixel gets the prediction; an observed non-zero ``x`` becomes
    ``w·x + (1 − w)·prediction`` with ``w = observed_weight``. The default ``w = 1``
    keeps measured values, as the paper does; lower weights pull them towards the
    prediction. At 0.5 % efficiency with default settings, ``w = 1`` against the earlier
    default 0.25 gave gene-wise Pearson 0.528 vs 0.520 (pbmc3k) and 0.621 vs 0.612 (ifnb),
    and Leiden ARI against cell types on ifnb 0.339 vs 0.239 (observed data 0.383):
    blending blurs cell types. On intestine (short runs) 0.25 scored higher, 0.327 vs
    0.312 (``benchmarks/results/tcer.md``).

    Normalisation (the paper's): ``log1p(counts / library × 1e4)``; images are divided
    by the maximum log-normalised value so that inputs lie in [0, 1].

    Parameters
    ----------
    adata
        Cells × genes (``n_obs × n_vars``) of **raw counts**.
    layer
        Layer holding the counts (``None``: ``adata.X``).
    genomap_key
        Key of the GenoMap placement (``uns[genomap_key]`` and the ``var`` columns
        ``genomap_key + "_row"`` / ``"_col"``). If absent, a GenoMap of all genes is
        built from the log-normalised data and stored under this key.
    preset
        ``"fast"`` (default; laptop CPU: ``n_features=16``, 30 epochs, lr 1e-3 halved every
        10 epochs, early stopping with patience 5, blind-spot objective, measured values
        kept) or ``"paper"`` (``n_features=64``, 100 epochs, lr halved every 40 epochs, no
        early stopping, dropout objective, measured values kept). Explicit arguments
        override the preset.
    n_features, epochs, lr, lr_step
        Network width ``F``, training epochs, Adam learning rate (β = 0.9, 0.999) and the
        epoch interval at which it is halved.
    batch_size
        GenoMaps per training batch (64 in the paper).
    mask_ratio
        ``(r_low, r_high)``: range of the per-image fraction of pixels hidden in training.
    fft_weight
        λ, the weight of the frequency-domain L1 term.
    patience
        Epochs without validation improvement before stopping (``None``: never stop
        early; ``"preset"``: the preset's value).
    validation_fraction
        Fraction of cells held out (with fixed masks) for the validation loss; 0 trains
        on all cells and keeps the last weights.
    observed_weight
        Weight ``w`` of an observed non-zero value against the prediction (0–1;
        ``None``: the preset's).
    objective
        ``"dropout"`` or ``"blind_spot"`` (see above; ``None``: the preset's).
    device
        Torch device (``None``: CUDA, then MPS, else CPU).
    rng
        Seed; the same seed on the same device gives the same result.
    key_added
        Output layer and ``uns`` key.
    progress
        Show progress bars.
    return_model
        Also return the trained :class:`TCERModel`.
    copy
        Work on and return a copy of ``adata``.

    Returns
    -------
    ``None`` (in place), the copy (``copy=True``), the model (``return_model=True``) or
    ``(copy, model)`` (both). Written:

    - ``layers[key_added]``: dense float32 ``n_obs × n_vars``, **log1p-normalised**;
    - ``uns[key_added]``: ``{"params": ..., "history": {"train_loss", "val_loss"}}``;
    - the GenoMap under ``genomap_key`` if it had to be built.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        If the input is not raw counts (e.g. log-normalised data passed as counts), a cell
        has zero counts, ``var_names`` has duplicates, the GenoMap under ``genomap_key``
        does not match the genes, or an argument is out of range.
    """
    import torch

    from ..nn._ernet import ERNet

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    pre = PRESETS[preset]
    lo, hi = (float(v) for v in mask_ratio)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"mask_ratio must satisfy 0 < low <= high < 1, got {mask_ratio!r}.")
    if not 0.0 <= validation_fraction < 0.5:
        raise ValueError(f"validation_fraction must lie in [0, 0.5), got {validation_fraction}.")
    p = TCERParams(
        n_features=int(n_features or pre["n_features"]),
        epochs=int(epochs if epochs is not None else pre["epochs"]),
        batch_size=int(batch_size),
        lr=float(lr or pre["lr"]),
        lr_step=int(lr_step or pre["lr_step"]),
        mask_ratio=(lo, hi),
        fft_weight=float(fft_weight),
        patience=pre["patience"] if patience == "preset" else patience,
        validation_fraction=float(validation_fraction),
        observed_weight=float(pre["observed_weight"] if observed_weight is None
                              else observed_weight),
        objective=objective or pre["objective"],
    )
    if p.objective not in ("dropout", "blind_spot"):
        raise ValueError(f"objective must be 'dropout' or 'blind_spot', got {objective!r}.")
    if not 0.0 <= p.observed_weight <= 1.0:
        raise ValueError(f"observed_weight must lie in [0, 1], got {observed_weight!r}.")
    if p.epochs < 1 or p.batch_size < 1 or p.n_features < 1:
        raise ValueError("epochs, batch_size and n_features must be >= 1.")

    # ---- validate everything before anything is written
    check_unique_var_names(adata)
    X = get_matrix(adata, layer)
    what = describe_source(layer)
    check_counts(X, what=what)
    check_cell_totals(X, what=what)
    Xlog = sparse.csr_matrix(log_normalize(X, target_sum=p.target_sum), dtype=np.float32)

    built_genomap = None
    if genomap_key in adata.uns:
        placement = _placement_from_adata(adata, genomap_key)
    else:
        from ._genomap import genomap

        logger.info("TCER: no GenoMap %r in adata; building one", genomap_key)
        tmp = ad.AnnData(Xlog, obs=adata.obs[[]], var=adata.var[[]])
        genomap(tmp, key_added=genomap_key, rng=rng)
        placement = _placement_from_adata(tmp, genomap_key)
        built_genomap = tmp

    seed = seed_int(rng)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    gen = get_rng(seed)
    n = adata.n_obs
    n_val = round(validation_fraction * n) if n >= 20 else 0
    perm = gen.permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    scale = float(Xlog.data.max()) if Xlog.nnz else 1.0
    Xs = Xlog / scale

    def images_of(idx):
        return placement.images(Xs[idx])

    net = ERNet(p.n_features).to(dev)
    history = _train(net, images_of, train_idx, val_idx, placement, p, dev, seed, progress)
    model = TCERModel(net, placement, p, scale, history)

    out = np.empty(adata.shape, dtype=np.float32)
    for sl in progress_bar(list(iter_batches(n, 256)), desc="TCER impute", progress=progress):
        pred = model._predict_images(images_of(np.arange(sl.start, sl.stop)), dev)
        out[sl] = placement.genes_of(pred) * scale

    # ---- write results
    target = adata.copy() if copy else adata
    if built_genomap is not None:
        for col in (f"{genomap_key}_row", f"{genomap_key}_col"):
            target.var[col] = built_genomap.var[col].to_numpy()
        target.uns[genomap_key] = built_genomap.uns[genomap_key]
    target.layers[key_added] = out
    params = make_params(layer=layer, genomap_key=genomap_key, preset=preset, device=str(dev),
                         rng=rng, **{k: v for k, v in asdict(p).items() if k != "extra"})
    target.uns[key_added] = {"params": params,
                             "history": {k: np.asarray(v) for k, v in history.items()}}
    if copy and return_model:
        return target, model
    if return_model:
        return model
    return target if copy else None
