"""Torch modules of stImpute (Zeng et al. 2024, Commun Biol 7:1271, §Methods).

- :class:`CellAutoEncoder`: the one-hidden-layer autoencoder of eqs. 1–3 that embeds
  spatial and reference cells in one space from their shared genes.
- :class:`GeneSAGE`: GraphSAGE over the gene graph (eqs. 7–8; mean aggregation, ReLU,
  L2 normalisation per layer as in Hamilton et al. 2017, Alg. 1) followed by the MLP of
  eq. 9 that maps every gene node to one expression value.
- :class:`ReliabilityMLP`: the post-hoc reliability model of eq. 13.

These modules know nothing of AnnData; :mod:`sctorch.stimpute._model` trains them and
:mod:`sctorch.tl._stimpute` does the AnnData in/out. This module imports torch and
torch-geometric at import time: import it lazily (:func:`sctorch.stimpute._train.torch_modules`
does, with an install hint and without torch-geometric's ``torch.jit.script`` deprecation
warning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import SAGEConv
from torch_geometric.utils import spmm


class CellAutoEncoder(nn.Module):
    """``x → ReLU(W1 x + b1) → ReLU(W2 h + b2)`` (eqs. 1–3); the code ``h`` is the embedding.

    Parameters
    ----------
    n_genes
        Number of shared (training) genes: input and output width.
    latent_dim
        Width of the embedding (100 in the authors' implementation).
    """

    def __init__(self, n_genes: int, latent_dim: int = 100):
        super().__init__()
        self.encoder = nn.Linear(n_genes, latent_dim)
        self.decoder = nn.Linear(latent_dim, n_genes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of cells ``x`` (``(n, n_genes)`` → ``(n, latent_dim)``)."""
        return F.relu(self.encoder(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, reconstruction)`` of ``x``."""
        h = self.encode(x)
        return h, F.relu(self.decoder(h))


class BatchedSAGEConv(SAGEConv):
    """:class:`torch_geometric.nn.SAGEConv` on one static graph shared by a batch of cells.

    Node features have shape ``(batch, n_nodes, in_channels)`` and the graph is given as a
    sparse ``adj_t`` (``torch.sparse_csr`` of shape ``(n_nodes, n_nodes)``, row = target).
    The neighbourhood aggregation is one sparse-dense product over the whole batch instead
    of a scatter per edge and cell; the result equals ``SAGEConv`` applied cell by cell.
    """

    def message_and_aggregate(self, adj_t, x):
        """Mean over in-neighbours for every cell of the batch at once."""
        if isinstance(x, tuple):
            x = x[0]
        if x.dim() == 2:
            return spmm(adj_t, x, reduce=self.aggr)
        b, g, f = x.shape
        flat = x.transpose(0, 1).reshape(g, b * f)
        out = spmm(adj_t, flat, reduce=self.aggr)
        return out.reshape(g, b, f).transpose(0, 1)


class GeneSAGE(nn.Module):
    """GraphSAGE over genes + per-gene MLP: ``(batch, genes, k)`` → ``(batch, genes)``.

    The features of gene node ``g`` for a spatial cell are the expression of ``g`` in that
    cell's ``k`` nearest reference cells (ordered by similarity). Each layer is
    ``h ← normalize(ReLU(SAGEConv_mean(h)))`` (eqs. 7–8); the MLP of eq. 9
    (``dim → 2·hidden → hidden → 1``) reads each node's final representation.

    Parameters
    ----------
    n_neighbors
        ``k``, the input feature width.
    dim
        Width of the GraphSAGE layers (50 in the paper).
    n_layers
        Number of GraphSAGE layers (2 in the paper).
    hidden_dim
        Width of the MLP head.
    normalize
        L2-normalise every node representation after each layer (GraphSAGE Alg. 1).
    aggr
        ``"mean"`` over the graph neighbours (unit weights), or ``"sum"`` of the stored
        edge weights (the authors' row-normalised distance graph, ``preset="paper"``).
    """

    def __init__(
        self,
        n_neighbors: int,
        dim: int = 50,
        n_layers: int = 2,
        hidden_dim: int = 64,
        normalize: bool = True,
        aggr: str = "mean",
    ):
        super().__init__()
        self.normalize = normalize
        self.convs = nn.ModuleList(
            BatchedSAGEConv(n_neighbors if i == 0 else dim, dim, aggr=aggr) for i in range(n_layers)
        )
        self.head = nn.Sequential(
            nn.Linear(dim, 2 * hidden_dim),
            nn.ReLU(),
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, x: torch.Tensor, adj_t) -> torch.Tensor:
        """Predict one value per gene and cell from neighbour features ``x``."""
        h = x
        for conv in self.convs:
            h = F.relu(conv(h, adj_t))
            if self.normalize:
                h = F.normalize(h, p=2.0, dim=-1)
        return self.head(h).squeeze(-1)


class ReliabilityMLP(nn.Module):
    """Eq. 13: a gene's predicted profile over cells → its expected cosine similarity.

    Parameters
    ----------
    n_inputs
        Length of the profile (number of cells it is read on).
    hidden_dim
        Width of the second hidden layer (the first has ``2 · hidden_dim``).
    """

    def __init__(self, n_inputs: int, hidden_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_inputs, 2 * hidden_dim),
            nn.ReLU(),
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """``(n_genes, n_inputs)`` → ``(n_genes,)`` reliability scores."""
        return self.net(profiles).squeeze(-1)


def imputation_loss(
    pred: torch.Tensor, target: torch.Tensor, cosine_weight: float = 2.0
) -> torch.Tensor:
    """Eq. 10: MSE + ``cosine_weight`` × (cell-level + gene-level cosine loss).

    Both cosine terms are ``1 − mean cosine similarity`` of the batch centred by its
    overall mean (rows = cells, columns = genes), as in the authors' implementation.
    """
    pc = pred - pred.mean()
    tc = target - target.mean()
    cell = 1.0 - F.cosine_similarity(pc, tc, dim=1, eps=1e-8).mean()
    gene = 1.0 - F.cosine_similarity(pc, tc, dim=0, eps=1e-8).mean()
    return F.mse_loss(pred, target) + cosine_weight * (cell + gene)
