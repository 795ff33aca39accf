"""ScRobustModel: the scRobust network with its vocabulary; pre-training, fine-tuning, apply.

Park & Lee, "scRobust: a robust self-supervised learning strategy to tackle the inherent
sparsity of single-cell RNA-seq data", Brief Bioinform 2024, 25(6):bbae586, §Methods
(eqs. 1–20). Both training loops (pre-training, eq. 11; fine-tuning, eqs. 12–15) run
through :func:`sctorch.models.fit`; saving and loading are :class:`~sctorch.models.BaseModel`'s
(one ``.safetensors`` file).
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._config import renamed
from .._utils import (
    RandomState,
    check_positive,
    iter_batches,
    progress_bar,
    resolve_device,
    seed_int,
    seeded,
)
from ..models._base import BaseModel
from ..models._fit import fit
from ._config import ScRobustConfig, ScRobustNetworkConfig
from ._data import (
    _Batcher,
    _class_weights,
    _label_series,
    _prepare,
    _Tokens,
    _unique_rank,
    check_special_tokens,
    finetune_batches,
    is_backed_input,
    pretrain_batches,
    vocab_digest,
)
from ._disk import DiskBatcher, DiskTokens, disk_tokens
from ._select import contrastive_validator, fit_wide_path, knn_validator, wide_source

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["ScRobustConfig", "ScRobustModel", "ScRobustNetworkConfig"]


class ScRobustModel(BaseModel):
    """A scRobust network with its vocabulary and hyper-parameters.

    Created by :func:`sctorch.tl.scrobust_pretrain` (or ``ScRobustModel(vocab=...,
    config=ScRobustNetworkConfig(...)).fit(adata)``), fine-tuned copies by :meth:`finetune` /
    :func:`sctorch.tl.scrobust_annotate`; saved with :meth:`save` and reloaded with
    :meth:`load` (one ``.safetensors`` file, see :class:`sctorch.models.BaseModel`).

    Parameters
    ----------
    module
        The :class:`~sctorch.scrobust._module.ScRobustNetwork` (``None`` before training).
    vocab
        Tokens in id order (stored as :attr:`genes`): special tokens first (``PAD``,
        ``SEP``, ``UNKNOWN``, ``CLS`` and, for vocabularies built from ``var_names``,
        ``MASK``), then gene symbols. ``genes=`` is the same argument.
    config
        The network's hyper-parameters: a :class:`ScRobustNetworkConfig` (stored as
        :attr:`config`, and in saved files), a dict of its fields, or the method's
        :class:`ScRobustConfig`, whose network part is taken
        (:meth:`ScRobustConfig.network_config`).
    classes
        Labels of the fine-tuned classifier (``None`` before fine-tuning).
    gene_detection
        For a fine-tuned model: the fraction of reference cells detecting each vocabulary
        token, ``(len(vocab),)`` float64, NaN for tokens absent from the reference; it
        fixes the "highly unique genes" order of queries.
    history
        ``{key: [value per epoch]}``: ``pretrain_loss | _contrastive | _mse`` (+ the
        selection score), after fine-tuning ``finetune_loss | _accuracy | _val_macro_f1``
        and ``finetune_gate`` (held-out F1, CE of the wide path, then of both paths).
    """

    config_cls = ScRobustNetworkConfig

    def __init__(
        self,
        module=None,
        vocab: Sequence[str] | None = None,
        config: Any = None,
        *,
        genes: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        gene_detection: np.ndarray | None = None,
        history: dict[str, list[float]] | None = None,
        wide_ids: np.ndarray | None = None,
    ):
        tokens = list(vocab if vocab is not None else (genes or ()))
        if isinstance(config, ScRobustConfig):
            config = config.network_config(len(tokens))
        elif isinstance(config, Mapping):
            config = ScRobustNetworkConfig(**{"vocab_size": len(tokens), **config})
        super().__init__(module, config=config, genes=tokens, history=history)
        self.classes = None if classes is None else [str(c) for c in classes]
        self.gene_detection = (
            None if gene_detection is None else np.asarray(gene_detection, dtype=np.float64)
        )
        self.wide_ids = None if wide_ids is None else np.asarray(wide_ids, dtype=np.int64)
        self._digest = vocab_digest(self.genes)  # the vocabulary the weights were made for
        self._index_of: tuple[int, dict[str, int]] | None = None

    # ---------------------------------------------------------------- aliases, tokens
    @property
    def network(self):
        """The torch network (alias of :attr:`module`)."""
        return self.module

    @network.setter
    def network(self, value) -> None:
        self.module = value

    @property
    def vocab(self) -> list[str]:
        """The token vocabulary in id order (alias of :attr:`genes`)."""
        return self.genes

    def _index(self) -> dict[str, int]:
        if self._index_of is None or self._index_of[0] != id(self.genes):
            first = {t: i for i, t in reversed(list(enumerate(self.genes)))}  # first id wins
            self._index_of = (id(self.genes), first)
        return self._index_of[1]

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self._index()["PAD"]

    @property
    def cls_id(self) -> int:
        """Id of the CLS token (its output is the cell embedding)."""
        return self._index()["CLS"]

    def token_ids(self, genes: Sequence[str]) -> np.ndarray:
        """Vocabulary id of each gene, ``-1`` where it is not in the vocabulary."""
        n_special = 5 if "MASK" in self.genes[:5] else 4
        special = set(self.genes[:n_special])
        index = self._index()
        return np.array(
            [-1 if g in special else index.get(g, -1) for g in map(str, genes)], dtype=np.int64
        )

    @property
    def is_fine_tuned(self) -> bool:
        """Whether the network carries a trained classifier."""
        return (
            self.classes is not None
            and self.module is not None
            and self.module.classifier is not None
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ScRobustModel(vocab={len(self.genes)} tokens, d_model={c.d_model}, "
            f"n_heads={c.n_heads}, n_layers={c.n_layers}, "
            f"classes={None if self.classes is None else len(self.classes)})"
        )

    # ---------------------------------------------------------------- BaseModel hooks
    @classmethod
    def _build_module(cls, config: ScRobustNetworkConfig, extra: dict[str, Any]):
        from ._module import ScRobustNetwork

        return ScRobustNetwork(
            config.vocab_size,
            config.d_model,
            config.n_heads,
            config.n_layers,
            config.dim_feedforward,
            config.dropout,
            config.head_dropout,
            n_classes=config.n_classes,
            n_wide=config.n_wide,
            head=config.head,
        )

    def _extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {} if self.gene_detection is None else {"gene_detection": self.gene_detection}
        if self.wide_ids is not None:
            arrays["wide_ids"] = self.wide_ids
        return {"classes": self.classes, "vocab_sha256": self._digest}, arrays

    def _set_extra_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.classes = extra.get("classes")
        self._digest = extra.get("vocab_sha256")
        det = arrays.get("gene_detection")
        self.gene_detection = None if det is None else det.astype(np.float64)
        wide = arrays.get("wide_ids")
        self.wide_ids = None if wide is None else wide.astype(np.int64)

    def _check_integrity(self) -> None:
        """Vocabulary, embedding rows, special tokens, classes and detection fit together."""
        rows = self.module.encoder.tokens.weight.shape[0]
        if len(self.genes) != rows or self.config.vocab_size != rows:
            raise ValueError(
                f"the vocabulary has {len(self.genes)} tokens but the token "
                f"embedding has {rows} rows."
            )
        check_special_tokens(self.genes)
        if self._digest != vocab_digest(self.genes):
            raise ValueError(
                "the vocabulary is not the one the model was trained with (it "
                "was reordered or edited)."
            )
        head = self.module.classifier
        n_out = 0 if head is None else head.net[-1].out_features
        if (len(self.classes) if self.classes is not None else 0) != n_out:
            raise ValueError(
                f"the model lists {len(self.classes or [])} classes but its "
                f"classifier has {n_out} outputs."
            )
        if self.classes is not None and self.gene_detection is None:
            raise ValueError("a fine-tuned model needs its reference gene detection.")
        if self.config.n_wide and (
            self.wide_ids is None or len(self.wide_ids) != self.config.n_wide
        ):
            raise ValueError(
                "the model's wide path lists a different number of genes than its weights expect."
            )
        if self.gene_detection is not None and len(self.gene_detection) != len(self.genes):
            raise ValueError(
                f"gene_detection has {len(self.gene_detection)} values for "
                f"{len(self.genes)} vocabulary tokens."
            )

    # ---------------------------------------------------------------- data
    def tokens(
        self,
        adata: ad.AnnData | _Tokens,
        *,
        layer: str | None = None,
        input_scale: str = "counts",
        min_shared_genes: int = 1,
        what: str = "adata",
        on_disk: bool = False,
    ) -> _Tokens | DiskTokens:
        """Validate ``adata`` and map it to this vocabulary (see :func:`._data._prepare`).

        Already prepared tokens are returned as they are, so that callers can validate
        their data once, before any training, and pass the tokens on. A backed AnnData is
        read by blocks into memory, or with ``on_disk`` left on disk
        (:func:`._disk.disk_tokens`: mini-batches are then read from the file).
        """
        if isinstance(adata, _Tokens | DiskTokens):
            return adata
        return (disk_tokens if on_disk and is_backed_input(adata, layer) else _prepare)(
            adata,
            self.token_ids,
            layer=layer,
            input_scale=input_scale,
            min_shared_genes=min_shared_genes,
            what=what,
        )

    def _resolve_config(self, tok: _Tokens) -> None:
        c = self.config
        n_genes = c.n_genes_per_view
        if n_genes is None:
            n_genes = max(8, round(0.1 * float(np.diff(tok.indptr).mean())))
        n_layers = c.n_layers if c.n_layers is not None else (2 if tok.n_obs >= 20_000 else 1)
        self.config = dataclasses.replace(
            c,
            vocab_size=len(self.genes),
            n_layers=int(n_layers),
            n_classes=0,
            n_genes_per_view=int(n_genes),
            input_scale=tok.input_scale,
            dim_feedforward=int(c.dim_feedforward or 4 * c.d_model),
        )

    # ---------------------------------------------------------------- pre-training
    def fit(
        self,
        adata: ad.AnnData | _Tokens,
        *,
        layer: str | None = None,
        input_scale: str = "counts",
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 5e-5,
        min_shared_genes: int = 10,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        select: str | None = None,
        patience: int | None = None,
        val_cells: int = 1000,
        embed_genes: int = 400,
    ) -> ScRobustModel:
        """Pre-train a fresh network on ``adata`` by cell augmentation (eqs. 1–11).

        Per step and cell, two random subsets of its non-zero genes
        (``config.n_genes_per_view`` each, drawn independently) are encoded; the loss is
        NT-Xent between their projected CLS outputs plus the MSE of predicting a third
        subset's expression from both (see :func:`sctorch.tl.scrobust_pretrain`). Trained
        with Adam (``lr``) through :func:`sctorch.models.fit`, inside
        :func:`sctorch._utils.seeded` (the caller's random streams are left unchanged).

        Parameters
        ----------
        adata
            Cells × genes, raw counts or log1p values (``input_scale``), or tokens from
            :meth:`tokens`. A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is
            checked in one pass, then each mini-batch is read from the file
            (:class:`._disk.DiskBatcher`); the weights equal those trained from memory.
        layer, input_scale, min_shared_genes
            Input matrix, its scale (``"counts"``, ``"log1p"`` or ``"auto"``) and the
            fewest vocabulary genes needed.
        epochs, batch_size, lr
            Passes, cells per step (≥ 2: NT-Xent needs a negative), Adam learning rate.
        device, rng, progress
            Torch device, seed (int or :class:`numpy.random.Generator`), progress bar.
        select, patience, val_cells, embed_genes
            Label-free epoch selection (``fit(validate=...)``): ``"knn"``, the most
            similar 15-NN graphs of the embeddings (``embed_genes`` genes per cell) of two
            thinned copies of ``val_cells`` cells (:func:`._select.knn_validator`; counts
            input); ``"contrastive"``, the lowest NT-Xent of 10 % held-out cells (the
            authors' rule); ``None``, the last epoch. ``patience``: see ``fit``.

        Returns
        -------
        ``self``, in evaluation mode, with ``history['pretrain_loss' | 'pretrain_contrastive'
        | 'pretrain_mse']`` (and ``'pretrain_knn_agreement'`` or ``'pretrain_val_contrastive'``)
        appended.

        Raises
        ------
        ValueError
            For invalid data (see :meth:`tokens`), fewer than 2 cells or ``batch_size`` < 2.
        """
        import torch

        check_positive(epochs=epochs, batch_size=batch_size, lr=lr)
        tok = self.tokens(
            adata,
            layer=layer,
            input_scale=input_scale,
            min_shared_genes=min_shared_genes,
            on_disk=True,
        )
        if tok.n_obs < 2 or batch_size < 2:
            raise ValueError(
                "Contrastive pre-training needs at least 2 cells and batch_size "
                f">= 2, got {tok.n_obs} cells and batch_size={batch_size}."
            )
        if select not in (None, "knn", "contrastive"):
            raise ValueError(f"select must be 'knn', 'contrastive' or None, got {select!r}.")
        if select == "knn" and not tok.has_counts:  # thinning needs molecules
            warnings.warn(
                "select='knn' needs raw counts; with log1p input the held-out "
                "contrastive loss selects the epoch.",
                UserWarning,
                stacklevel=2,
            )
            select = "contrastive"
        self._resolve_config(tok)
        self._digest = vocab_digest(self.genes)
        dev, seed = resolve_device(device), seed_int(rng)
        with seeded(seed):
            gen = torch.Generator().manual_seed(seed)
            self.module = self.build_module(self.config, {}).to(dev)
            self.classes, self.gene_detection, self.wide_ids = None, None, None
            train_tok, validate, key = tok, None, None
            if select == "knn":
                validate, key = knn_validator(self, tok, val_cells, embed_genes, seed, dev)
            elif select == "contrastive":
                train_tok, validate, key = contrastive_validator(self, tok, batch_size, seed, dev)
            batches = self.pretrain_batches(train_tok, min(batch_size, train_tok.n_obs), gen, dev)
            fit(
                self.module,
                functools.partial(self.module.pretrain_loss, temperature=self.config.temperature),
                batches,
                epochs=epochs,
                lr=lr,
                history=self.history,
                prefix="pretrain",
                desc="scRobust pre-training",
                progress=progress,
                validate=validate,
                val_key=key or "val_loss",
                mode="max" if select == "knn" else "min",
                patience=patience,
            )
        self.module.eval()
        return self

    pretrain = fit

    def batcher(self, tok: _Tokens | DiskTokens, device) -> _Batcher | DiskBatcher:
        """The batch builder of ``tok`` for this vocabulary and token values.

        Parameters
        ----------
        tok
            Tokens from :meth:`tokens` (in memory, or :class:`._disk.DiskTokens`).
        device
            Torch device the batches are put on.

        Returns
        -------
        A :class:`._data._Batcher` (or :class:`._disk.DiskBatcher` for tokens on disk)
        whose ``select(rows, n_tokens, ...)`` gives ``(ids, scales, pad)`` batches.
        """
        dev = device
        kind = DiskBatcher if isinstance(tok, DiskTokens) else _Batcher
        return kind(
            tok, pad_id=self.pad_id, cls_id=self.cls_id, device=dev, values=self.config.token_values
        )

    def pretrain_batches(self, tok: _Tokens, batch_size: int, generator, device):
        """``epoch -> batches`` of pre-training (view 1, view 2, target), cells shuffled.

        Parameters
        ----------
        tok
            Tokens from :meth:`tokens`.
        batch_size
            Cells per batch.
        generator
            :class:`torch.Generator` that draws the order, the views and their thinning.
        device
            Torch device of the batches.

        Returns
        -------
        A callable ``epoch -> iterable`` of batches, each the argument of
        :meth:`~sctorch.scrobust._module.ScRobustNetwork.pretrain_loss` (views of
        ``config.n_genes_per_view`` genes, thinned at ``config.view_thinning`` for counts).
        """
        thin = self.config.view_thinning if tok.has_counts else None
        return pretrain_batches(
            self.batcher(tok, device), self.config.n_genes_per_view, thin, batch_size, generator
        )

    # ---------------------------------------------------------------- fine-tuning
    def finetune(
        self,
        adata_ref: ad.AnnData | _Tokens,
        labels,
        *,
        layer: str | None = None,
        input_scale: str = "counts",
        n_tokens: int = 800,
        epochs: int = 20,
        batch_size: int = 32,
        lr: float = 5e-5,
        class_weight: str | Mapping[str, float] | None = "balanced",
        min_shared_genes: int = 10,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        head: str = "deep",
        n_wide_genes: int = 2000,
        validation_fraction: float = 0.0,
        patience: int | None = None,
        wide_c: float | None = 1.0,
        **kwargs: Any,
    ) -> ScRobustModel:
        """A fine-tuned copy: encoder plus a new two-layer classifier (eqs. 12–15).

        Each reference cell is encoded from its ``n_tokens`` "highly unique genes" (rarest
        detected in the reference first); encoder and classifier are trained with
        (class-weighted) cross-entropy through :func:`sctorch.models.fit` (Adam, ``lr``;
        the pre-training heads stay frozen), inside :func:`sctorch._utils.seeded`. This
        model is not changed.

        Parameters
        ----------
        adata_ref
            Labelled reference cells (or tokens from :meth:`tokens`).
        labels
            One label per reference cell (sequence or :class:`pandas.Series`).
        class_weight
            ``"balanced"``, ``{label: weight}`` or ``None`` (see
            :func:`sctorch.tl.scrobust_annotate`).
        layer, input_scale, min_shared_genes
            Input matrix, its scale and the fewest vocabulary genes (see :meth:`fit`).
        n_tokens
            Highly unique genes (tokens) per cell (800 as the paper).
        epochs, batch_size, lr
            Fine-tuning passes (at most), cells per step, Adam learning rate.
        device, rng, progress
            Torch device, seed (int or :class:`numpy.random.Generator`), progress bar.
        head, n_wide_genes
            Classifier layout (``"deep"``, ``"wide"`` or ``"wide_and_deep"``, see
            :meth:`~sctorch.scrobust._module.ScRobustNetwork.set_classifier`); the wide path
            reads the log-normalised expression of the reference's ``n_wide_genes`` highly
            variable genes (:func:`._select.select_wide_genes`).
        wide_c
            Inverse L2 strength of the wide path's logistic regression (``C`` of
            scikit-learn); ``None`` chooses it from ``_select.WIDE_C_GRID`` by the
            out-of-fold macro-F1 on the training part of the reference
            (:func:`._select.fit_wide`); recorded in ``history['wide_c']``.
        validation_fraction, patience
            With ``validation_fraction`` > 0, that stratified part of the reference is held
            out and the epoch with its best macro-F1 is kept (``patience``: epochs without
            improvement before stopping), as the authors' code does.
        **kwargs
            The former names ``n_genes`` (now ``n_tokens``) and ``val_fraction`` (now
            ``validation_fraction``), accepted with a ``FutureWarning``.

        Returns
        -------
        The fine-tuned :class:`ScRobustModel` (evaluation mode) with ``classes`` (sorted
        labels), ``gene_detection`` and ``history['finetune_loss' | 'finetune_accuracy']``.

        Raises
        ------
        ValueError
            If the model is not trained, labels are NaN, a single class or not one per
            cell, ``class_weight`` is invalid, or the data are invalid.
        """
        import torch

        kw = _old_names(kwargs, "ScRobustModel.finetune", val_fraction="validation_fraction")
        n_tokens = kw.get("n_tokens", n_tokens)
        validation_fraction = kw.get("validation_fraction", validation_fraction)
        if self.module is None:
            raise ValueError("This ScRobustModel has not been pre-trained; call fit() first.")
        check_positive(n_tokens=n_tokens, epochs=epochs, batch_size=batch_size, lr=lr)
        labels = _label_series(labels)
        weights = _class_weights(labels, class_weight)
        rtok = self.tokens(
            adata_ref,
            layer=layer,
            input_scale=input_scale,
            min_shared_genes=min_shared_genes,
            what="adata_ref",
        )
        if len(labels) != rtok.n_obs:
            raise ValueError(f"{len(labels)} labels for {rtok.n_obs} reference cells.")
        dev, seed = resolve_device(device), seed_int(rng)
        classes = sorted(labels.unique())
        w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=dev)
        y_all = torch.as_tensor(
            np.array(pd.Categorical(labels, categories=classes).codes), dtype=torch.long
        )
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
        from ._select import gate_deep_path, held_out_scores, holdout, select_wide_genes

        wide_ids = None if head == "deep" else select_wide_genes(rtok, int(n_wide_genes))
        n_wide = 0 if wide_ids is None else len(wide_ids)
        ft = ScRobustModel(
            _copy.deepcopy(self.module).to(dev),
            self.genes,
            dataclasses.replace(self.config, n_classes=len(classes), head=head, n_wide=n_wide),
            classes=classes,
            history=_copy.deepcopy(self.history),
            wide_ids=wide_ids,
        )
        ft._digest = self._digest
        with seeded(seed):
            gen = torch.Generator().manual_seed(seed)
            ft.module.set_classifier(len(classes), n_wide=n_wide, head=head)
            ft.module.to(dev)
            ft.gene_detection = rtok.detection(len(ft.genes))
            codes = y_all.numpy()
            tr, va = (
                holdout(codes, validation_fraction, seed)
                if validation_fraction > 0
                else (np.arange(rtok.n_obs), np.array([], dtype=np.int64))
            )
            ttok = rtok if va.size == 0 else rtok.subset(tr)
            oof = None
            if head != "deep":
                oof = fit_wide_path(ft, ttok, codes[tr], weights, seed, c=wide_c)
                wide_c = ft.history["wide_c"][0]  # the refits below keep the one chosen
            val_scores = (
                None
                if va.size == 0
                else held_out_scores(ft, rtok.subset(va), codes[va], dev, n_tokens, batch_size)
            )
            validate = None if val_scores is None else (lambda: val_scores()[0])

            if head == "wide":  # the linear path alone: nothing to train by gradient
                fit_wide_path(ft, rtok, codes, weights, seed, oof=False, c=wide_c)
                ft.module.eval()
                return ft
            gate = head == "wide_and_deep" and val_scores is not None
            base = val_scores() if gate else None
            batches = ft.finetune_batches(ttok, y_all[tr], n_tokens, batch_size, gen, dev, oof)
            params = [
                p
                for name, p in ft.module.named_parameters()
                if not name.startswith(("cl_head", "ge_head", "wide"))
            ]
            fit(
                ft.module,
                functools.partial(ft.module.finetune_loss, class_weight=w),
                batches,
                epochs=epochs,
                lr=lr,
                params=params,
                history=ft.history,
                prefix="finetune",
                desc="scRobust fine-tuning",
                progress=progress,
                validate=validate,
                val_key="finetune_val_macro_f1",
                mode="max",
                patience=patience,
            )
            if gate:
                gate_deep_path(ft, base, val_scores)
            if head != "deep" and va.size:  # epoch chosen: the linear path sees every cell
                fit_wide_path(ft, rtok, codes, weights, seed, oof=False, c=wide_c)
        ft.module.eval()
        return ft

    def finetune_batches(
        self, tok: _Tokens, labels, n_tokens: int, batch_size: int, generator, device, oof=None
    ):
        """``epoch -> batches`` of fine-tuning (ids, scales, pad, None, wide logits, labels).

        Parameters
        ----------
        tok
            Reference tokens from :meth:`tokens`.
        labels
            ``(n_obs,)`` int64 tensor of class codes.
        n_tokens
            Highly unique genes per cell, in the order of :attr:`gene_detection`.
        batch_size, generator, device
            Cells per batch, :class:`torch.Generator` of the shuffling, torch device.
        oof
            ``(n_obs, n_classes)`` out-of-fold logits of the wide path (or ``None``).

        Returns
        -------
        A callable ``epoch -> iterable`` of batches, each the argument of
        :meth:`~sctorch.scrobust._module.ScRobustNetwork.finetune_loss`.
        """
        return finetune_batches(
            self.batcher(tok, device),
            _unique_rank(self.gene_detection),
            labels,
            n_tokens,
            batch_size,
            generator,
            device,
            oof,
        )

    # ---------------------------------------------------------------- apply
    def embed(
        self,
        adata: ad.AnnData | _Tokens,
        *,
        layer: str | None = None,
        input_scale: str = "counts",
        n_tokens: int = 400,
        gene_order: str = "unique",
        batch_size: int = 64,
        min_shared_genes: int = 10,
        device: str | None = None,
        rng: RandomState = 0,
        progress: bool = True,
        **kwargs: Any,
    ) -> np.ndarray:
        """Cell embeddings: the CLS output from up to ``n_tokens`` genes per cell.

        ``gene_order="unique"`` takes each cell's rarest-detected genes (in ``adata``)
        first (eq. 12); ``"random"`` a random subset drawn from ``rng``. An AnnData opened
        with ``anndata.read_h5ad(path, backed="r")`` is read and encoded ``batch_size``
        cells at a time (:meth:`._disk.DiskTokens.apply`, after one checking pass that
        also gives each gene's detection), never as a whole.

        Parameters
        ----------
        adata
            Cells × genes (raw counts, or log1p values with ``input_scale="log1p"``), in
            memory or backed, or tokens from :meth:`tokens`.
        layer
            Layer holding the data (``None``: ``adata.X``).
        input_scale
            ``"counts"``, ``"log1p"`` or ``"auto"`` (see :meth:`fit`).
        n_tokens
            Genes (tokens) per cell fed to the encoder (400 as the authors' code).
        gene_order
            ``"unique"`` (rarest-detected genes first) or ``"random"``.
        batch_size
            Cells per forward pass (and per block read from a backed file).
        min_shared_genes
            Fewest genes of ``adata`` that must be in the vocabulary.
        device
            Torch device (``None``: CUDA, then MPS, else CPU).
        rng
            Seed (int or :class:`numpy.random.Generator`) of the ``"random"`` order.
        progress
            Show a progress bar.
        **kwargs
            The former name ``n_genes`` (now ``n_tokens``), accepted with a
            ``FutureWarning``.

        Returns
        -------
        ``(n_obs, d_model)`` float32 array, rows in the order of ``adata``.

        Raises
        ------
        ValueError
            For an untrained model, a bad ``gene_order`` or invalid data.
        """
        import torch

        n_tokens = _old_names(kwargs, "ScRobustModel.embed").get("n_tokens", n_tokens)
        if self.module is None:
            raise ValueError("This ScRobustModel has not been trained; call fit() first.")
        if gene_order not in ("unique", "random"):
            raise ValueError(f"gene_order must be 'unique' or 'random', got {gene_order!r}.")
        dev = resolve_device(device)
        self.to(dev)
        gen = torch.Generator().manual_seed(seed_int(rng))

        def encode(tok: _Tokens, det: np.ndarray, bar: bool = False) -> np.ndarray:
            rank = _unique_rank(det) if gene_order == "unique" else None
            return self.encode(
                tok, dev, n_tokens, batch_size, rank=rank, generator=gen, progress=bar
            )

        tok = self.tokens(
            adata,
            layer=layer,
            input_scale=input_scale,
            min_shared_genes=min_shared_genes,
            on_disk=True,
        )
        det = tok.detection(len(self.genes))
        if isinstance(tok, DiskTokens):
            return tok.apply(lambda t: encode(t, det), batch_size)
        return encode(tok, det, progress)

    def predict_proba(
        self,
        adata: ad.AnnData | _Tokens,
        *,
        layer: str | None = None,
        input_scale: str = "counts",
        n_tokens: int = 800,
        batch_size: int = 32,
        min_shared_genes: int = 10,
        device: str | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> np.ndarray:
        """Class probabilities ``(n_obs, len(classes))`` of a fine-tuned model.

        Cells are encoded from their ``n_tokens`` highly unique genes in the reference's
        detection order (genes absent from the reference fall back to their detection in
        ``adata``); the softmax of the classifier's logits (eq. 15). A backed ``adata`` is
        read ``batch_size`` cells at a time (:meth:`._disk.DiskTokens.apply`).

        Parameters
        ----------
        adata, layer, input_scale, min_shared_genes, device, progress
            As in :meth:`embed`.
        n_tokens
            Highly unique genes (tokens) per cell (800 as the paper).
        batch_size
            Cells per forward pass.
        **kwargs
            The former name ``n_genes`` (now ``n_tokens``), with a ``FutureWarning``.

        Raises
        ------
        ValueError
            If the model is not fine-tuned, or for invalid data.
        """
        import torch

        n_tokens = _old_names(kwargs, "ScRobustModel.predict_proba").get("n_tokens", n_tokens)
        if not self.is_fine_tuned or self.gene_detection is None:
            raise ValueError(
                "This ScRobustModel has no classifier; fine-tune it first "
                "(finetune() or scrobust_annotate(..., return_model=True))."
            )
        dev = resolve_device(device)
        self.to(dev)
        tok = self.tokens(
            adata,
            layer=layer,
            input_scale=input_scale,
            min_shared_genes=min_shared_genes,
            what="adata_query",
            on_disk=True,
        )
        if isinstance(tok, DiskTokens):  # batch_size cells at a time, detection of the file
            det = tok.detection(len(self.genes))
            logits = tok.apply(
                lambda t: self.logits(t, dev, n_tokens, batch_size, progress=False, det=det),
                batch_size,
            )
        else:
            logits = self.logits(tok, dev, n_tokens, batch_size, progress=progress)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(self, adata: ad.AnnData | _Tokens, **kwargs) -> np.ndarray:
        """Most probable class of each cell (keywords as :meth:`predict_proba`)."""
        return np.asarray(self.classes)[self.predict_proba(adata, **kwargs).argmax(1)]

    def logits(
        self,
        tok: _Tokens,
        device,
        n_tokens: int,
        batch_size: int,
        *,
        progress: bool,
        det: np.ndarray | None = None,
    ) -> np.ndarray:
        """Class logits of every cell, genes in the reference's detection order.

        Parameters
        ----------
        tok
            Tokens from :meth:`tokens` (in memory).
        device
            Torch device.
        n_tokens, batch_size
            Highly unique genes per cell; cells per forward pass.
        progress
            Show a progress bar.
        det
            Detection of each vocabulary token in the query, used for genes the reference
            lacks (``None``: computed from ``tok``).

        Returns
        -------
        ``(n_obs, n_classes)`` float32 array.
        """
        det = tok.detection(len(self.genes)) if det is None else det
        det = np.where(np.isnan(self.gene_detection), det, self.gene_detection)
        return self.encode(
            tok,
            device,
            n_tokens,
            batch_size,
            rank=_unique_rank(det),
            generator=None,
            progress=progress,
            logits=True,
        )

    def encode(
        self,
        tok: _Tokens,
        device,
        n_tokens: int,
        batch_size: int,
        *,
        rank,
        generator,
        progress: bool,
        logits: bool = False,
    ) -> np.ndarray:
        """CLS outputs (or class logits) of every cell, batched by similar token count.

        Parameters
        ----------
        tok
            Tokens from :meth:`tokens` (in memory).
        device
            Torch device.
        n_tokens, batch_size
            Genes per cell; cells per forward pass.
        rank
            Rank of each vocabulary token (lower first, :func:`._data._unique_rank`), or
            ``None`` for a random subset drawn from ``generator``.
        generator
            :class:`torch.Generator` of the random subsets (``None`` with ``rank``).
        progress
            Show a progress bar.
        logits
            Return the classifier's logits instead of the CLS outputs.

        Returns
        -------
        ``(n_obs, d_model)`` (or ``(n_obs, n_classes)``) float32 array, rows in the order of
        ``tok``.
        """
        import torch

        dev = device
        batcher = self.batcher(tok, dev)
        wide = wide_source(self, tok) if logits else None
        net = self.module
        net.eval()
        # cells in order of their number of genes: batches of similar length waste little padding
        order = torch.from_numpy(np.argsort(np.diff(tok.indptr), kind="stable"))
        out = None
        with torch.inference_mode():
            for sl in progress_bar(
                list(iter_batches(tok.n_obs, batch_size)), desc="scRobust", progress=progress
            ):
                rows = order[sl]
                ids, vals, pad = batcher.select(rows, n_tokens, rank=rank, generator=generator)
                y = (
                    net.classify(ids, vals, pad, wide(rows, dev))
                    if logits
                    else net.embed(ids, vals, pad)
                )
                y = y.float().cpu().numpy()
                if out is None:
                    out = np.empty((tok.n_obs, y.shape[1]), dtype=np.float32)
                out[rows.numpy()] = y
        return out


def _old_names(kwargs: dict[str, Any], where: str, **more: str) -> dict[str, Any]:
    """``kwargs`` with the former ``n_genes`` (and ``more``: old -> new) renamed, warned.

    Raises
    ------
    TypeError
        For any other keyword.
    """
    renamed(kwargs, old="n_genes", new="n_tokens", where=where)
    for old, new in more.items():
        renamed(kwargs, old=old, new=new, where=where)
    extra = sorted(set(kwargs) - {"n_tokens", *more.values()})
    if extra:
        raise TypeError(f"{where}() got an unexpected keyword argument {extra[0]!r}")
    return kwargs
