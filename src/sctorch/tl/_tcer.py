"""TCER public function: impute dropouts with ER-Net on GenoMap images (Wei et al. 2024).

A thin wrapper: validate -> read (or build) the GenoMap -> :class:`TCERModel` ``fit`` ->
``predict`` -> write keys. The method lives in :mod:`sctorch.tcer`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

from .. import _keys
from .._config import resolve_config
from .._docs import doc_params
from .._utils import (
    RandomState,
    accepts_random_state,
    check_copy,
    get_matrix,
    make_params,
    resolve_device,
    row_sums,
    seed_int,
)
from ..tcer._config import TCERConfig
from ..tcer._model import TCERModel, check_counts_input

logger = logging.getLogger("sctorch")

__all__ = ["TCERConfig", "TCERModel", "tcer_impute"]


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


@accepts_random_state
@doc_params
def tcer_impute(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    genomap_key: str = _keys.GENOMAP,
    preset: str = "default",
    config: TCERConfig | Mapping[str, Any] | None = None,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.TCER,
    counts_key: str | None = None,
    progress: bool = True,
    return_model: bool = False,
    copy: bool = False,
    **kwargs: Any,
) -> ad.AnnData | TCERModel | tuple[ad.AnnData, TCERModel] | None:
    """Impute dropouts with TCER: a self-supervised ER-Net on GenoMap images.

    Wei et al. 2024, Brief Bioinform 25(2):bbae031. The cells' log-normalised
    expression is laid out as GenoMap images (§GenoMap Construction; built with
    :func:`sctorch.tl.genomap` if ``adata`` has none) and ER-Net
    (:class:`sctorch.tcer._module.ERNet`, §ER-Net, Figure 9) is trained on the **observed
    data only** to recover pixels hidden behind the placeholder δ = -1 (eqs. 12–16). A
    held-out ``validation_fraction`` of cells, with fixed masks, gives the masked loss
    used for early stopping and to keep the best weights. The reference (ground truth)
    is never used, for training or for any choice.

    **The default departs from the paper** (``preset="default"``), because the paper's
    design scores below simple imputers on real data (``benchmarks/results/tcer.md``;
    trained to the paper's 100 epochs it falls further, and even the epoch picked with
    the ground truth stays below the observed data: ``benchmarks/results/tcer_paper.md``);
    ``preset="paper"`` keeps the paper's design:

    1. *Cross-cell context* (``n_neighbors``): ER-Net gets a second input channel, the
       GenoMap of the mean normalised expression of the cell's ``k`` nearest *other*
       cells (PCA of the log-normalised counts), averaged on the square-root scale
       (``space="sqrt"``: the squared mean of the root rates, the variance-stabilised
       mean of Poisson counts, as MAGIC's "sqrt" normalisation), and predicts a
       log-ratio to it (a residual; :func:`sctorch.tcer._module.poisson_rate`). The paper
       images each cell alone; MAGIC, kNN smoothing and SAVER win by pooling similar
       cells.
    2. *Objective* ``"sqrt"``: blind-spot masks (a ratio ``r ~ U(mask_ratio)`` of *all*
       gene pixels, zeros included, get δ; Noise2Self, Batson & Royer 2019) and the
       squared error ``(√μ − √r)²`` between the root predicted rate μ and the root
       observed rate of the hidden pixels, minimised by ``(E√r)²``, the scale of the
       context (``"poisson"``, ``μ − r·log μ``, minimised by the mean rate, was the
       earlier default and, trained, fills more zeros). The paper's L1 loss on the
       observed non-zero pixels only (``"dropout"``) predicts the value a gene would
       have *if detected* and inflates every zero at low capture efficiency.
    3. *Output* ``"posterior"``: the network's blind-spot prediction μ (which never saw
       the pixel) is a prior mean, and the output is the posterior rate on the
       square-root scale, ``log1p(((√(y s) + β √μ) / (s + β))²)``, ``y`` the count and
       ``s`` the library size / 10⁴ (``space="linear"``: SAVER's ``(y + β μ) / (s + β)``,
       Huang et al. 2018, eq. 2). The paper keeps measured values and fills zeros
       (``"observed"``).
    4. ``k`` (from :data:`sctorch.tcer.K_GRID`) and β (from
       :data:`sctorch.tcer.BETA_GRID` × the median ``s``), each grid extended past its
       edge while its largest value scores best, are chosen by *molecular
       cross-validation* (Batson, Royer & Webber 2019): counts are split binomially into
       halves, the output from one half is scored by the Poisson likelihood of the other
       half's molecules (``criterion="poisson"``; ``"pearson"``, the gene-wise
       correlation, was the earlier default and keeps the observed data at full depth;
       :mod:`sctorch.tcer._mcv`). The chosen values are in
       ``uns[key_added]["params"]``.
    5. *A bounded budget, and the network only where it pays*: at most
       ``max_cells_per_epoch`` cells per epoch and 3 epochs; in the ablations the network
       adds little or nothing over its starting point, the neighbour mean (the objective
       starts ER-Net at a zero log-ratio to its context): the neighbour prior and the
       posterior do the work (``docs/which_method.md``). With ``prior="auto"`` the
       network's posterior is kept only if it scores higher than the neighbour mean's on
       the held-out cells' molecules (the same molecular cross-validation); otherwise no
       cell goes through the network at inference. The choice is
       ``uns[key_added]["params"]["prior_fitted"]``.

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
    error on the log-normalised values (sctorch's earlier default). ``"noise2noise"``
    (not in the paper) hides no pixel: each cell's counts are split binomially, and
    ER-Net learns to predict one part's rates from the other part's whole GenoMap and the
    context, by their Poisson loss; at inference it sees the full counts. It is the one
    design in which the network and the GenoMap raise the held-out Poisson score at full
    depth, but it lowers the openproblems MSE and the down-sampling correlation, so it
    is not the default (``benchmarks/results/tcer_denoising.md``,
    ``benchmarks/results/tcer.md``, ``docs/which_method.md``). With
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
        ``"default"`` (laptop CPU: ``n_features=16``, up to 3 epochs of at most 1,024
        cells, lr 1e-3, early stopping with patience 3, cross-cell context with ``k``
        and one β per gene chosen by the Poisson likelihood of held-out molecules,
        square-root scale,
        blind-spot objective, posterior output) or
        ``"paper"`` (``n_features=64``, 100 epochs, lr halved every 40 epochs, no early
        stopping, no context, dropout objective, measured values kept): the named
        instances ``TCERConfig.PRESETS``. ``"fast"``, the former name of ``"default"``,
        is still accepted with a ``FutureWarning``.
    {config}
    {device}
    {rng}
    {random_state}
    key_added
        Output layer and ``uns`` key.
    counts_key
        Also write the output on the **count scale**, at each cell's own depth, to
        ``layers[counts_key]``: ``expm1(layers[key_added]) × library / target_sum``, the
        posterior mean count with the default ``output="posterior"`` (SAVER's estimate);
        what MAGIC's "reversed normalisation" and the openproblems denoising task expect.
        ``None``: not written.
    {progress}
    return_model
        Also return the trained :class:`TCERModel` (its ``save`` refuses to replace an
        existing file unless ``overwrite=True``).
    {copy}
    {kwargs}
        The settings of :class:`~sctorch.tcer.TCERConfig` (each documented there):
        ``n_features``, ``n_dfa``, ``epochs``, ``batch_size``, ``lr``, ``lr_step``,
        ``mask_ratio``, ``fft_weight``, ``patience`` (``None``: never stop early),
        ``validation_fraction``, ``target_sum``, ``observed_weight``, ``objective``,
        ``n_neighbors`` (``None``: chosen by molecular cross-validation; 0: no context),
        ``output``, ``beta`` (``None``: chosen by molecular cross-validation),
        ``shrinkage`` (``"gene"``: one β per gene; ``"global"``: one for all), ``prior``
        and ``deformable``.

    Returns
    -------
    ``None`` (in place), the copy (``copy=True``), the model (``return_model=True``) or
    ``(copy, model)`` (both). Written:

    - ``layers[key_added]``: dense float32 ``n_obs × n_vars``, **log1p-normalised**;
    - ``layers[counts_key]`` (only if given): dense float32 ``n_obs × n_vars``, **counts**
      at each cell's depth;
    - ``uns[key_added]``: ``{"params": ..., "history": {"train_loss", "val_loss"},
      "selection": {"n_neighbors": {k: score}, "beta": {relative β: score} (or
      ``{"gene": score, "global": score}`` with ``shrinkage="gene"``), "prior":
      {"context" | "network": score}}}`` (params include the fitted
      ``n_neighbors_fitted``, ``beta_fitted`` (a number, or float64 ``(n_vars,)``, one
      per gene, with ``shrinkage="gene"``) and ``prior_fitted``);
    - the GenoMap under ``genomap_key`` if it had to be built.

    Raises
    ------
    KeyError
        If ``layer`` is missing.
    ValueError
        If the input is not raw counts (e.g. log-normalised data passed as counts), a cell
        has zero counts, ``var_names`` has duplicates, the GenoMap under ``genomap_key``
        does not match the genes, or an argument is out of range.
    TypeError
        If a keyword is not a setting of :class:`~sctorch.tcer.TCERConfig`.
    MemoryError
        Before any allocation, if ``adata`` has no GenoMap and the one to build over all
        its genes would not fit in memory (see :func:`sctorch.tl.genomap`): select highly
        variable genes first.
    """
    p = resolve_config(TCERConfig, preset, config, kwargs)
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
    if counts_key is not None:
        size = row_sums(get_matrix(adata, layer)) / p.target_sum
        target.layers[counts_key] = np.expm1(out) * size[:, None].astype(np.float32)
    params = make_params(
        layer=layer,
        genomap_key=genomap_key,
        counts_key=counts_key,
        preset=preset,
        device=str(dev),
        rng=rng,
        n_neighbors_fitted=model.n_neighbors,
        beta_fitted=np.nan if model.beta is None else model.beta,
        prior_fitted="network" if model.use_network else "context",
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
