"""TCER public function: impute dropouts with ER-Net on GenoMap images (Wei et al. 2024).

A thin wrapper: validate -> read (or build) the GenoMap -> :class:`TCERModel` ``fit`` ->
``predict`` -> write keys. The method lives in :mod:`sctorch.tcer`.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np

from .. import _keys
from .._utils import RandomState, check_copy, make_params, resolve_device, seed_int
from ..tcer._config import PRESETS, TCERParams
from ..tcer._model import TCERModel, check_counts_input

logger = logging.getLogger("sctorch")

__all__ = ["TCERModel", "TCERParams", "tcer_impute"]


def _resolve_params(
    preset,
    *,
    n_features,
    epochs,
    batch_size,
    lr,
    lr_step,
    mask_ratio,
    fft_weight,
    patience,
    validation_fraction,
    observed_weight,
    objective,
    n_neighbors="preset",
    output=None,
    beta=None,
    deformable=True,
) -> TCERParams:
    """The preset's settings overridden by the explicit arguments, validated."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    pre = PRESETS[preset]
    p = TCERParams(
        n_features=int(pre["n_features"] if n_features is None else n_features),
        epochs=int(epochs if epochs is not None else pre["epochs"]),
        batch_size=int(batch_size),
        lr=float(pre["lr"] if lr is None else lr),
        lr_step=int(pre["lr_step"] if lr_step is None else lr_step),
        mask_ratio=tuple(mask_ratio),
        fft_weight=float(fft_weight),
        patience=pre["patience"] if patience == "preset" else patience,
        validation_fraction=float(validation_fraction),
        observed_weight=float(
            pre["observed_weight"] if observed_weight is None else observed_weight
        ),
        objective=objective or pre["objective"],
        n_neighbors=pre["n_neighbors"]
        if isinstance(n_neighbors, str) and n_neighbors == "preset"
        else n_neighbors,
        output=output or pre["output"],
        beta=None if beta is None else float(beta),
        deformable=bool(deformable),
    )
    if isinstance(p.n_neighbors, str):
        raise ValueError(
            f"n_neighbors must be 'preset', None or an integer >= 0, got {n_neighbors!r}."
        )
    p.validate()
    p.mask_ratio = tuple(float(v) for v in p.mask_ratio)
    return p


def _build_genomap(
    adata: ad.AnnData, layer: str | None, key: str, rng: RandomState, progress: bool
) -> ad.AnnData:
    """A GenoMap of all genes of ``adata``, on a throw-away AnnData holding only the placement.

    Built from the counts, log-normalised per block of cells (a backed ``adata`` is read
    by blocks); nothing is written to ``adata``.
    """
    from ._genomap import _place

    logger.info("TCER: no GenoMap %r in adata; building one", key)
    rows, cols, record = _place(adata, layer=layer, rng=rng, progress=progress)
    tmp = ad.AnnData(obs=adata.obs[[]], var=adata.var[[]])
    tmp.var[f"{key}_row"], tmp.var[f"{key}_col"], tmp.uns[key] = rows, cols, record
    return tmp


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
    n_neighbors: int | str | None = "preset",
    output: str | None = None,
    beta: float | None = None,
    deformable: bool = True,
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
    (:class:`sctorch.tcer._module.ERNet`, §ER-Net, Figure 9) is trained on the **observed
    data only** to recover pixels hidden behind the placeholder δ = -1 (eqs. 12–16). A
    held-out ``validation_fraction`` of cells, with fixed masks, gives the masked loss
    used for early stopping and to keep the best weights. The reference (ground truth)
    is never used, for training or for any choice.

    **The default departs from the paper** (``preset="fast"``), because the paper's
    design scores below simple imputers on real data (``benchmarks/results/tcer.md``);
    ``preset="paper"`` keeps the paper's design:

    1. *Cross-cell context* (``n_neighbors``): ER-Net gets a second input channel, the
       GenoMap of the mean normalised expression of the cell's ``k`` nearest *other*
       cells (PCA of the log-normalised counts), and predicts a log-ratio to it (a
       residual; :func:`sctorch.tcer._module.poisson_rate`). The paper images each cell
       alone; MAGIC, kNN smoothing and SAVER win by pooling similar cells.
    2. *Objective* ``"poisson"``: blind-spot masks (a ratio ``r ~ U(mask_ratio)`` of
       *all* gene pixels, zeros included, get δ; Noise2Self, Batson & Royer 2019) and a
       Poisson loss ``μ − r·log μ`` between the predicted rate μ and the observed rate
       of the hidden pixels, minimised by the expected rate. The paper's L1 loss on the
       observed non-zero pixels only (``"dropout"``) predicts the value a gene would
       have *if detected* and inflates every zero at low capture efficiency.
    3. *Output* ``"posterior"`` (SAVER, Huang et al. 2018, eq. 2): the network's
       blind-spot prediction μ (which never saw the pixel) is a prior mean, and the
       output is ``log1p((y + β μ) / (s + β))``, ``y`` the count and ``s`` the library
       size / 10⁴. The paper keeps measured values and fills zeros (``"observed"``).
    4. ``k`` (from :data:`sctorch.tcer.K_GRID`) and β (from
       :data:`sctorch.tcer.BETA_GRID` × the median ``s``) are chosen by *molecular
       cross-validation* (Batson, Royer & Webber 2019): counts are split binomially into
       halves, the output from one half is scored by its gene-wise correlation with the
       other (:mod:`sctorch.tcer._context`). The chosen values are in
       ``uns[key_added]["params"]``.

    Where the authors' code (github aijinrjinr/TCER) differs from the paper, ``"paper"``
    follows the paper: their training target is the observed (down-sampled) GenoMap;
    zeros and 10–25 % of non-zeros are set to 0.999 in the input, so a masked value and
    a zero look alike; the loss is L1 over all pixels plus 0.02 × L1 on the FFT; the
    output is the raw network output, not blended with measured values; the first layer
    whitens with the batch covariance (FastDeconv); and their training script saves a
    checkpoint by Pearson correlation against the **ground truth** every 50 steps (the
    README then loads a fixed epoch-50 checkpoint): a choice made with the reference,
    which sctorch never makes.

    The other objective, ``"blind_spot"``, is the blind-spot masking with a squared
    error on the log-normalised values (sctorch's earlier default). With
    ``output="observed"``, a zero pixel gets the prediction and an observed non-zero
    ``x`` becomes ``w·x + (1 − w)·prediction`` with ``w = observed_weight``. Which
    setting to use on which data: ``docs/which_method.md``; measured numbers and the
    ablations: ``benchmarks/results/tcer.md``.

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
        ``"fast"`` (default; laptop CPU: ``n_features=16``, up to 20 epochs, lr 1e-3
        halved every 10 epochs, early stopping with patience 3, cross-cell context with
        ``k`` chosen by molecular cross-validation, Poisson blind-spot objective,
        posterior output) or ``"paper"`` (``n_features=64``, 100 epochs, lr halved every
        40 epochs, no early stopping, no context, dropout objective, measured values
        kept). Explicit arguments override the preset.
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
        ``"poisson"``, ``"blind_spot"`` or ``"dropout"`` (see above; ``None``: the
        preset's).
    n_neighbors
        Cells in the cross-cell context: ``None`` chooses it by molecular
        cross-validation, 0 switches the context off (one input channel, as the paper),
        ``"preset"``: the preset's.
    output
        ``"posterior"`` or ``"observed"`` (see above; ``None``: the preset's).
    beta
        Prior weight β of the posterior output, in units of library size / 10⁴
        (``None``: chosen by molecular cross-validation on the held-out cells).
    deformable
        ``False`` replaces the deformable convolutions of the DFA modules by plain ones
        (an ablation).
    device
        Torch device (``None``: CUDA, then MPS, else CPU).
    rng
        Seed; the same seed on the same device gives the same result.
    key_added
        Output layer and ``uns`` key.
    progress
        Show progress bars.
    return_model
        Also return the trained :class:`TCERModel` (its ``save`` refuses to replace an
        existing file unless ``overwrite=True``).
    copy
        Work on and return a copy of ``adata``.

    Returns
    -------
    ``None`` (in place), the copy (``copy=True``), the model (``return_model=True``) or
    ``(copy, model)`` (both). Written:

    - ``layers[key_added]``: dense float32 ``n_obs × n_vars``, **log1p-normalised**;
    - ``uns[key_added]``: ``{"params": ..., "history": {"train_loss", "val_loss"},
      "selection": {"n_neighbors": {k: score}, "beta": {relative β: score}}}`` (params
      include the fitted ``n_neighbors_fitted`` and ``beta_fitted``);
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
    p = _resolve_params(
        preset,
        n_features=n_features,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_step=lr_step,
        mask_ratio=mask_ratio,
        fft_weight=fft_weight,
        patience=patience,
        validation_fraction=validation_fraction,
        observed_weight=observed_weight,
        objective=objective,
        n_neighbors=n_neighbors,
        output=output,
        beta=beta,
        deformable=deformable,
    )
    check_copy(adata, copy)
    check_counts_input(adata, layer)  # validate everything before anything is written
    built = (
        None
        if genomap_key in adata.uns
        else _build_genomap(adata, layer, genomap_key, rng, progress)
    )
    model = TCERModel.from_genomap(adata if built is None else built, p, genomap_key=genomap_key)
    seed = seed_int(rng)
    dev = resolve_device(device)
    model.fit(adata, layer=layer, rng=seed, device=dev, progress=progress)
    out = model.predict(adata, layer=layer, device=dev, progress=progress)

    target = adata.copy() if copy else adata
    if built is not None:
        for col in (f"{genomap_key}_row", f"{genomap_key}_col"):
            target.var[col] = built.var[col].to_numpy()
        target.uns[genomap_key] = built.uns[genomap_key]
    target.layers[key_added] = out
    params = make_params(
        layer=layer,
        genomap_key=genomap_key,
        preset=preset,
        device=str(dev),
        rng=rng,
        n_neighbors_fitted=model.n_neighbors,
        beta_fitted=np.nan if model.beta is None else model.beta,
        **model.params_record(),
    )
    target.uns[key_added] = {
        "params": params,
        "history": {k: np.asarray(v) for k, v in model.history.items()},
        "selection": {
            name: {str(k): float(v) for k, v in scores.items()}
            for name, scores in model.selection.items()
        },
    }
    if copy and return_model:
        return target, model
    if return_model:
        return model
    return target if copy else None
