"""scRobust torch modules (Park & Lee, Brief Bioinform 2024, 25(6):bbae586, §Methods).

Gene-token embedding (eqs. 1–2), Transformer encoder with a CLS token, the two-layer
projection heads of pre-training (eqs. 3–11) and the classifier of fine-tuning
(eqs. 12–15). These modules know nothing of AnnData: ``sctorch.scrobust._data`` builds the
token batches and :class:`sctorch.scrobust.ScRobustModel` trains them through
:func:`sctorch.models.fit`.

Token batches are three tensors of shape ``(batch, length)``: ``ids`` (vocabulary ids,
``int64``), ``scales`` (the gene's expression in the cell, ``float32``) and ``pad``
(``bool``, ``True`` where the position is padding and must be ignored by attention).
Position 0 of every sequence is the CLS token with scale 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models._fit import LossOutput

__all__ = [
    "GeneTokenEmbedding",
    "ProjectionHead",
    "ScRobustEncoder",
    "ScRobustNetwork",
    "nt_xent_loss",
]


class GeneTokenEmbedding(nn.Module):
    """Expression-scaled gene tokens: ``e_g / ||e_g|| × x_g`` (eqs. 1–2).

    Each vocabulary entry has a trainable vector; the vector is normalised to unit length
    and multiplied by the gene's expression in the cell. There are no positional or
    segment embeddings: the order of genes in a cell carries no meaning.

    Parameters
    ----------
    vocab_size
        Number of tokens (special tokens included).
    d_model
        Embedding width.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        # raw vectors of norm ≈ 1, so that their dot products with the expression head's
        # output (eqs. 9–10) start on the scale of log-normalised expression
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)

    @property
    def weight(self) -> torch.Tensor:
        """The raw (not normalised) gene vectors, ``(vocab_size, d_model)``."""
        return self.embedding.weight

    def forward(self, ids: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Token vectors of shape ``(batch, length, d_model)`` for ``ids``/``scales``."""
        e = F.normalize(self.embedding(ids), dim=-1, eps=1e-12)
        return e * scales.unsqueeze(-1).to(e.dtype)


class ScRobustEncoder(nn.Module):
    """Gene-token embedding followed by a :class:`torch.nn.TransformerEncoder`.

    The encoder layers are post-LayerNorm (as BERT), ``batch_first`` and use
    :func:`torch.nn.functional.scaled_dot_product_attention` through
    :class:`torch.nn.MultiheadAttention` (fused paths on CPU and GPU). The output at
    position 0 (the CLS token) is the cell embedding.

    Parameters
    ----------
    vocab_size, d_model
        Vocabulary size and model width.
    n_heads, n_layers
        Attention heads and encoder layers (paper: 8 heads, 1 layer; 2 layers for
        ≥ 20,000 cells).
    dim_feedforward
        Width of the feed-forward block (``4 × d_model`` when ``None``, as BERT).
    dropout
        Dropout inside the encoder layers.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        n_heads: int = 8,
        n_layers: int = 1,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        self.tokens = GeneTokenEmbedding(vocab_size, d_model)
        # post-LayerNorm (BERT layout): attention sees the expression-scaled tokens. With
        # pre-LayerNorm, LN(s·e) = LN(e) would erase the expression scale s of eq. 2 before
        # the CLS token attends to the genes.
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=dim_feedforward or 4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

    def forward(
        self, ids: torch.Tensor, scales: torch.Tensor, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states ``(batch, length, d_model)``; ``[:, 0]`` is the cell embedding."""
        x = self.tokens(ids, scales)
        return self.transformer(x, src_key_padding_mask=pad)

    def cls_output(
        self, ids: torch.Tensor, scales: torch.Tensor, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The cell embedding ``(batch, d_model)``: ``forward(...)[:, 0]``, computed cheaply.

        The last layer's output at position 0 depends on the other positions only through
        their keys and values, so the last layer is evaluated for the CLS query alone
        (attention and feed-forward block on one position instead of ``length``). The
        result equals ``forward(ids, scales, pad)[:, 0]`` (up to float rounding); for a
        1-layer encoder of 800 tokens it costs about a tenth.
        """
        x = self.tokens(ids, scales)
        layers = self.transformer.layers
        for layer in layers[:-1]:
            x = layer(x, src_key_padding_mask=pad)
        last = layers[-1]
        q = x[:, :1]
        if last.norm_first:
            h = last.norm1(x)
            q = q + last.dropout1(
                last.self_attn(h[:, :1], h, h, key_padding_mask=pad, need_weights=False)[0]
            )
            q = q + last._ff_block(last.norm2(q))
        else:
            q = last.norm1(
                q
                + last.dropout1(
                    last.self_attn(q, x, x, key_padding_mask=pad, need_weights=False)[0]
                )
            )
            q = last.norm2(q + last._ff_block(q))
        if self.transformer.norm is not None:
            q = self.transformer.norm(q)
        return q[:, 0]

    def cls_attention(
        self, ids: torch.Tensor, scales: torch.Tensor, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention of the CLS query over all tokens in the last layer, head-averaged.

        Returns
        -------
        Tensor ``(batch, length)``; rows sum to 1 over non-padded positions.
        """
        x = self.tokens(ids, scales)
        layers = self.transformer.layers
        for layer in layers[:-1]:
            x = layer(x, src_key_padding_mask=pad)
        last = layers[-1]
        h = last.norm1(x) if last.norm_first else x
        _, w = last.self_attn(
            h[:, :1], h, h, key_padding_mask=pad, need_weights=True, average_attn_weights=True
        )
        return w[:, 0]


class ProjectionHead(nn.Module):
    """Two-layer head ``Linear → ELU → Dropout → Linear`` (projection and classifier)."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_in), nn.ELU(), nn.Dropout(dropout), nn.Linear(d_in, d_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the head to ``(…, d_in)``."""
        return self.net(x)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    r"""NT-Xent (SimCLR) loss of two views, eqs. 6–8.

    For ``2N`` projected embeddings :math:`z` (``z1`` then ``z2``), with cosine similarity
    :math:`s_{ij}`, the loss of the positive pair :math:`(i, j)` is
    :math:`-\log \frac{\exp(s_{ij}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)}`, averaged over
    all ``2N`` anchors.

    Parameters
    ----------
    z1, z2
        ``(N, d)`` projections of the first and second view of the same ``N`` cells.
    temperature
        :math:`\tau` (0.07 in the paper).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class ScRobustNetwork(nn.Module):
    """Encoder plus the pre-training heads and (optionally) a classifier.

    Parameters
    ----------
    vocab_size, d_model, n_heads, n_layers, dim_feedforward, dropout
        See :class:`ScRobustEncoder`.
    head_dropout
        Dropout of the two-layer heads.
    n_classes
        Classes of the fine-tuning classifier (``0``: none).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        n_heads: int = 8,
        n_layers: int = 1,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        head_dropout: float = 0.3,
        n_classes: int = 0,
        n_wide: int = 0,
        head: str = "deep",
    ):
        super().__init__()
        self.encoder = ScRobustEncoder(
            vocab_size, d_model, n_heads, n_layers, dim_feedforward, dropout
        )
        self.cl_head = ProjectionHead(d_model, d_model, head_dropout)
        self.ge_head = ProjectionHead(d_model, d_model, head_dropout)
        self.head_dropout = head_dropout
        self.classifier = self.wide = None
        self.head = "deep"
        if n_classes:
            self.set_classifier(n_classes, n_wide=n_wide, head=head)

    def set_classifier(self, n_classes: int, *, n_wide: int = 0, head: str = "deep") -> None:
        """Attach a fresh classifier with ``n_classes`` outputs.

        ``head="deep"``: the paper's two-layer classifier on the CLS output (eq. 13);
        ``"wide"``: a linear layer on ``n_wide`` expression features alone; ``"wide_and_deep"``:
        the sum of both logits (the wide path sees the features, the deep path the CLS
        output).
        """
        if head not in ("deep", "wide", "wide_and_deep"):
            raise ValueError(f"head must be 'deep', 'wide' or 'wide_and_deep', got {head!r}.")
        if head != "deep" and n_wide < 1:
            raise ValueError(f"head={head!r} needs n_wide >= 1 expression features.")
        d = self.encoder.tokens.weight.shape[1]
        self.head = head
        self.classifier = ProjectionHead(d, n_classes, self.head_dropout)
        self.wide = nn.Linear(n_wide, n_classes) if head != "deep" else None
        if self.wide is not None:  # the deep path starts at 0: the logits start as the wide's
            for lin in (self.wide, self.classifier.net[-1]):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def embed(self, ids, scales, pad=None) -> torch.Tensor:
        """CLS output ``(batch, d_model)``: the cell embedding."""
        return self.encoder.cls_output(ids, scales, pad)

    def predict_expression(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Expression of genes ``ids`` (``(N, L)``) predicted from cell embeddings ``h``.

        The cell embedding goes through the expression head and is dotted with the raw
        gene vectors (eqs. 9–10); returns ``(N, L)``.
        """
        g = self.ge_head(h)
        return torch.einsum("nld,nd->nl", self.encoder.tokens.weight[ids], g)

    def pretrain_loss(self, batch, temperature: float = 0.07) -> LossOutput:
        """Contrastive + expression-prediction loss of one pre-training batch (eq. 11).

        Parameters
        ----------
        batch
            ``(view1, view2, target)``: ``view1``, ``view2`` are ``(ids, scales, pad)`` of
            two random subsets of each cell's non-zero genes; ``target`` the
            ``(ids, scales, pad)`` of a third subset whose expression is predicted from the
            embeddings of both views.
        temperature
            NT-Xent temperature τ (eqs. 6–8).

        Returns
        -------
        :class:`~sctorch.models.LossOutput`: ``loss`` = NT-Xent + MSE (scalar tensor),
        ``metrics`` = ``{"contrastive": NT-Xent, "mse": MSE}`` (detached scalar tensors).
        """
        view1, view2, target = batch
        n = view1[0].shape[0]
        ids = torch.cat([view1[0], view2[0]])
        scales = torch.cat([view1[1], view2[1]])
        pad = torch.cat([view1[2], view2[2]])
        h = self.embed(ids, scales, pad)
        cl = nt_xent_loss(self.cl_head(h[:n]), self.cl_head(h[n:]), temperature)
        t_ids, t_scales, t_pad = target
        pred = self.predict_expression(h, torch.cat([t_ids, t_ids]))
        keep = ~torch.cat([t_pad, t_pad])
        mse = ((pred - torch.cat([t_scales, t_scales])) ** 2)[keep].mean()
        return LossOutput(cl + mse, {"contrastive": cl.detach(), "mse": mse.detach()})

    def finetune_loss(self, batch, class_weight: torch.Tensor | None = None) -> LossOutput:
        """(Class-weighted) cross-entropy of the classifier on one fine-tuning batch (eq. 14).

        Parameters
        ----------
        batch
            ``(ids, scales, pad, wide_x, wide_logits, labels)``: the arguments of
            :meth:`classify` then the ``(batch,)`` int64 class codes.
        class_weight
            ``(n_classes,)`` weights of the cross-entropy, or ``None`` (unweighted).

        Returns
        -------
        :class:`~sctorch.models.LossOutput`: ``loss`` = the cross-entropy, ``metrics`` =
        ``{"accuracy": fraction of the batch classified right}``.
        """
        *x, y = batch
        out = self.classify(*x)
        acc = (out.detach().argmax(1) == y).float().mean()
        return LossOutput(F.cross_entropy(out, y, weight=class_weight), {"accuracy": acc})

    def set_wide(self, coef, bias) -> None:
        """Set the wide path's weights and freeze them (it is fitted outside gradient descent).

        Parameters
        ----------
        coef
            ``(n_classes, n_wide)`` weights (array or tensor).
        bias
            ``(n_classes,)`` biases.

        Raises
        ------
        RuntimeError
            If the classifier has no wide path (``head="deep"``).
        """
        if self.wide is None:
            raise RuntimeError("this network's classifier has no wide path.")
        with torch.no_grad():
            self.wide.weight.copy_(torch.as_tensor(coef))
            self.wide.bias.copy_(torch.as_tensor(bias))
        self.wide.requires_grad_(False)

    def zero_deep_path(self) -> None:
        """Zero the deep classifier's output layer: a wide-and-deep head becomes its wide path."""
        last = self.classifier.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def classify(self, ids, scales, pad=None, wide_x=None, wide_logits=None) -> torch.Tensor:
        """Class logits ``(batch, n_classes)``: the classifier on the CLS output (eq. 13).

        Wide heads add a linear layer on ``wide_x`` (``(batch, n_wide)``), or given
        ``wide_logits`` in its place (out-of-fold logits while fine-tuning).
        """
        if self.classifier is None:
            raise RuntimeError("this network has no classifier; call set_classifier first.")
        if self.head != "deep" and wide_logits is None:
            wide_logits = self.wide(wide_x)
        if self.head == "wide":
            return wide_logits
        out = self.classifier(self.embed(ids, scales, pad))
        return out if self.head == "deep" else out + wide_logits
