"""stImpute: unmeasured spatial genes from a scRNA-seq reference over a gene graph.

Zeng et al., "Imputing spatial transcriptomics through gene network constructed from
protein language model", Commun Biol 7:1271 (2024), §Methods eqs. 1–13 and
§Implementation details; authors' code: github.com/cquzys/stImpute.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys
from .._utils import (
    RandomState,
    check_finite,
    check_non_negative,
    check_unique_var_names,
    describe_source,
    get_matrix,
    is_integer_matrix,
    iter_batches,
    log_normalize,
    make_params,
    progress_bar,
    resolve_device,
    row_sums,
    seed_everything,
    seed_int,
    to_dense,
)

logger = logging.getLogger("sctorch")

_TG_HINT = ("stImpute needs torch-geometric (torch_geometric.nn.SAGEConv). Install it with "
            "`pip install torch-geometric`.")
# elements of one densified (cells × genes × k) feature block; bounds memory per batch
_BLOCK_ELEMENTS = 2**23
_DENSE_REF_ELEMENTS = 2**26
_RELIABILITY_MAX_CELLS = 4096


def _nn():
    """The torch modules, imported lazily with an install hint."""
    try:
        import torch_geometric  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_TG_HINT) from err
    from ..nn import _stimpute

    return _stimpute


# ----------------------------------------------------------------------------- inputs
def _fold(name: str, case_sensitive: bool) -> str:
    return name if case_sensitive else name.upper()


def _name_index(names: Sequence[str], case_sensitive: bool, what: str) -> dict[str, int]:
    """Map (case-folded) name → position; refuse names that collide after folding."""
    out: dict[str, int] = {}
    for i, n in enumerate(names):
        k = _fold(str(n), case_sensitive)
        if k in out:
            raise ValueError(f"{what} has two names that match {k!r} when compared "
                             f"{'exactly' if case_sensitive else 'case-insensitively'} "
                             f"({names[out[k]]!r} and {n!r}); make them unique first.")
        out[k] = i
    return out


def _embedding_table(embeddings) -> tuple[list[str], np.ndarray]:
    """``(gene names, (n, d) float32)`` from a DataFrame (genes × dims) or a mapping."""
    if isinstance(embeddings, pd.DataFrame):
        names = [str(g) for g in embeddings.index]
        try:
            M = embeddings.to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError("gene_embeddings must hold numbers (genes × dimensions).") from err
    elif isinstance(embeddings, Mapping):
        names = [str(g) for g in embeddings]
        vecs = [np.asarray(v, dtype=np.float32).ravel() for v in embeddings.values()]
        dims = {v.shape[0] for v in vecs}
        if len(dims) > 1:
            by_dim: dict[int, list[str]] = {}
            for n, v in zip(names, vecs, strict=True):
                by_dim.setdefault(v.shape[0], []).append(n)
            desc = ", ".join(f"{d} dims: {len(g)} gene(s) e.g. {g[:3]}" for d, g in by_dim.items())
            raise ValueError(f"gene_embeddings have different dimensions per gene ({desc}); "
                             "all embeddings must come from the same model and layer.")
        M = np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)
    else:
        raise TypeError("gene_embeddings must be a pandas DataFrame (genes × dimensions) or a "
                        f"mapping gene → vector, got {type(embeddings).__name__}.")
    if len(set(names)) != len(names):
        raise ValueError("gene_embeddings has duplicate gene names.")
    if M.size and not np.isfinite(M).all():
        raise ValueError(f"gene_embeddings contains {int((~np.isfinite(M)).sum())} non-finite "
                         "value(s).")
    return names, M


def _normalised(adata: ad.AnnData, layer: str | None, what: str):
    """The paper's normalisation: raw counts → total / median total, log1p; else as given.

    Returns ``(matrix, description)``; the user's matrix is never modified.
    """
    X = get_matrix(adata, layer)
    src = f"{what} ({describe_source(layer)})"
    check_finite(X, what=src)
    check_non_negative(X, what=src)
    if is_integer_matrix(X):
        # the median over cells with counts, given explicitly: Scanpy's own median differs
        # between sparse and dense input when some cells have zero counts
        lib = row_sums(X)
        target = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
        return (log_normalize(X, target_sum=target),
                "raw counts, normalised here (median total, log1p)")
    return X, "non-integer, used as given (assumed normalised and log1p-transformed)"


def _columns(X, idx: np.ndarray):
    """Columns ``idx`` of ``X`` as a CSR matrix (if sparse) or a float32 array."""
    if sparse.issparse(X):
        return sparse.csr_matrix(X)[:, idx].astype(np.float32)
    return np.ascontiguousarray(np.asarray(X)[:, idx], dtype=np.float32)


# ----------------------------------------------------------------------------- gene graph
class _GeneSimilarity:
    """Pairwise gene similarity of eqs. 4–6 over a fixed gene list, evaluated in blocks.

    ``S[i, j]`` = cosine of the protein embeddings when both genes have one (eq. 4), else
    cosine of their expression over the reference cells (eq. 5); the merged matrix (eq. 6)
    is never stored, only its top-k entries per gene.
    """

    def __init__(self, n_genes: int, emb: np.ndarray | None, has_emb: np.ndarray,
                 expression=None):
        self.n = n_genes
        self.has_emb = has_emb
        self.emb = None
        if emb is not None and has_emb.any():
            E = np.zeros((n_genes, emb.shape[1]), np.float64)
            E[has_emb] = emb
            nrm = np.linalg.norm(E, axis=1, keepdims=True)
            self.emb = (E / np.where(nrm > 0, nrm, 1.0)).astype(np.float32)
        self.expr = None
        if not has_emb.all():
            if expression is None:
                raise ValueError(f"{int((~has_emb).sum())} gene(s) have no embedding and no "
                                 "reference expression was given to build their edges (eq. 5).")
            # unit-norm columns; the same float32 values whether the input is sparse or dense
            if sparse.issparse(expression):
                Xc = sparse.csc_matrix(expression, dtype=np.float64, copy=True)
                nrm = np.sqrt(np.asarray(Xc.multiply(Xc).sum(0)).ravel())
                inv = 1.0 / np.where(nrm > 0, nrm, 1.0)
                Xc.data *= np.repeat(inv, np.diff(Xc.indptr))
                self.expr = sparse.csc_matrix(Xc, dtype=np.float32)
            else:
                X = np.asarray(expression, dtype=np.float64)
                nrm = np.sqrt((X * X).sum(0))
                self.expr = (X * (1.0 / np.where(nrm > 0, nrm, 1.0))).astype(np.float32)

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarities ``S[rows][:, cols]``.

        Float64, rounded to 1e-9 so that sparse and dense inputs give the same ranking.
        """
        S = np.zeros((len(rows), len(cols)), np.float64)
        both = self.has_emb[rows][:, None] & self.has_emb[cols][None, :]
        if self.expr is not None and not both.all():
            A = self.expr[:, rows].astype(np.float64)
            for cs in iter_batches(len(cols), 2048):
                P = A.T @ self.expr[:, cols[cs]].astype(np.float64)
                S[:, cs] = P.toarray() if sparse.issparse(P) else P
        if self.emb is not None and both.any():
            P = self.emb[rows].astype(np.float64) @ self.emb[cols].astype(np.float64).T
            S = np.where(both, P, S)
        return np.round(S, 9)

    def knn_graph(self, idx: np.ndarray, k: int) -> sparse.csr_matrix:
        """Symmetric top-``k`` graph among genes ``idx`` (CSR, weights = similarity)."""
        m = len(idx)
        k = min(k, m - 1)
        if k < 1:
            return sparse.csr_matrix((m, m), dtype=np.float32)
        rows_l, cols_l, vals_l = [], [], []
        for sl in iter_batches(m, 1024):
            S = self.block(idx[sl], idx)
            r = np.arange(sl.start, sl.stop)
            S[r - sl.start, r] = -np.inf  # no self loops: SAGEConv adds the root term itself
            nb = np.argsort(-S, axis=1, kind="stable")[:, :k]  # ties: lower index first
            rows_l.append(np.repeat(r, k))
            cols_l.append(nb.ravel())
            vals_l.append(np.take_along_axis(S, nb, axis=1).ravel())
        A = sparse.csr_matrix((np.concatenate(vals_l).astype(np.float32),
                               (np.concatenate(rows_l), np.concatenate(cols_l))),
                              shape=(m, m), dtype=np.float32)
        # union of the two directions; similarity is symmetric so the values agree
        return A.maximum(A.T).tocsr()


def _similarity_for(genes: list[str], embeddings, expression, case_sensitive: bool
                    ) -> tuple[_GeneSimilarity, int]:
    has = np.zeros(len(genes), bool)
    emb = None
    if embeddings is not None:
        names, M = _embedding_table(embeddings)
        lookup = _name_index(names, case_sensitive, "gene_embeddings")
        pos = np.array([lookup.get(_fold(g, case_sensitive), -1) for g in genes])
        has = pos >= 0
        emb = M[pos[has]] if has.any() else None
    return _GeneSimilarity(len(genes), emb, has, expression), int(has.sum())


def stimpute_gene_graph(
    genes: Sequence[str],
    *,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    expression=None,
    n_neighbors: int = 10,
    case_sensitive: bool = True,
) -> sparse.csr_matrix:
    """The stImpute gene graph: sparse, symmetric top-k cosine similarity (eqs. 4–6).

    Two genes are compared by the cosine similarity of their protein-language-model
    embeddings (eq. 4) when both have one, otherwise by the cosine similarity of their
    expression across reference cells (eq. 5); the merged similarity (eq. 6) is reduced
    to each gene's ``n_neighbors`` most similar genes and symmetrised (an edge is kept
    when either gene lists the other). The paper's graph is dense; keeping the top-k
    makes it scale to tens of thousands of genes (similarities are computed in blocks of
    1,024 genes and never stored whole).

    Parameters
    ----------
    genes
        The ``n_genes`` node names, unique.
    gene_embeddings
        Genes × dimensions DataFrame (e.g. :func:`sctorch.pp.esm_gene_embeddings` or
        :func:`sctorch.datasets.esm2_gene_embeddings`) or a mapping gene → 1-D vector.
    expression
        ``(n_cells, n_genes)`` reference expression (dense or sparse, log-normalised),
        columns in the order of ``genes``; needed when a gene lacks an embedding.
    n_neighbors
        ``k`` neighbours per gene before symmetrisation (capped at ``n_genes − 1``).
    case_sensitive
        Match ``genes`` to the embeddings' names exactly (``True``) or ignoring case.

    Returns
    -------
    ``scipy.sparse.csr_matrix`` of shape ``(n_genes, n_genes)``, float32, symmetric, zero
    diagonal; stored values are the similarities of the connected pairs. Every gene has
    at least ``min(n_neighbors, n_genes − 1)`` neighbours.

    Raises
    ------
    ValueError
        If ``genes`` has duplicates, ``n_neighbors < 1``, embeddings differ in dimension
        or hold non-finite values, or genes without embeddings have no ``expression``
        (or it has the wrong number of columns).
    """
    genes = [str(g) for g in genes]
    _name_index(genes, case_sensitive, "genes")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}.")
    if expression is not None and expression.shape[1] != len(genes):
        raise ValueError(f"expression has {expression.shape[1]} columns but {len(genes)} genes "
                         "were given; pass the reference columns in the order of `genes`.")
    sim, _ = _similarity_for(genes, gene_embeddings, expression, case_sensitive)
    return sim.knn_graph(np.arange(len(genes)), n_neighbors)


# ----------------------------------------------------------------------------- training
class _Problem:
    """Tensors and settings of one stImpute fit (train genes → target genes)."""

    def __init__(self, sp, ref, n_train: int, sim: _GeneSimilarity, cfg: dict, device,
                 seed: int, progress: bool):
        import torch

        self.torch = torch
        self.sp = sp  # n_sp × n_train (CSR or ndarray), normalised
        self.n_train = n_train
        self.n_all = ref.shape[1]
        self.sim = sim  # similarity over the ref columns (train genes, then targets)
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        if sparse.issparse(ref) and ref.shape[0] * ref.shape[1] > _DENSE_REF_ELEMENTS:
            self.ref = sparse.csr_matrix(ref)
            self.ref_t = None
        else:
            self.ref = None
            self.ref_t = torch.as_tensor(to_dense(ref), device=device)
        self.k = cfg["n_neighbors"]
        self._adj: dict[bytes, Any] = {}

    # --- data access
    def sp_rows(self, idx):
        return self.torch.as_tensor(to_dense(self.sp[idx]), device=self.device)

    def ref_rows(self, idx, cols: np.ndarray | None = None):
        """Reference rows (any shape of indices) → tensor ``idx.shape + (n_cols,)``."""
        flat = np.asarray(idx).ravel()
        if self.ref_t is not None:
            t = self.ref_t[self.torch.as_tensor(flat, device=self.device)]
            if cols is not None:
                t = t[:, self.torch.as_tensor(cols, device=self.device)]
        else:
            block = self.ref[flat]
            if cols is not None:
                block = block[:, cols]
            t = self.torch.as_tensor(to_dense(block), device=self.device)
        return t.reshape(*np.shape(idx), t.shape[-1])

    def features(self, cells, cols: np.ndarray, nbr: np.ndarray):
        """``(batch, len(cols), k)``: each gene's expression in the cell's k neighbours."""
        return self.ref_rows(nbr[cells], cols).transpose(1, 2)

    def batch_size(self, n_genes: int) -> int:
        return max(1, min(self.cfg["batch_size"], _BLOCK_ELEMENTS // max(1, n_genes * self.k)))

    def adjacency(self, cols: np.ndarray):
        """The graph among ``cols`` as a torch CSR ``adj_t`` with unit weights (cached)."""
        key = np.asarray(cols, np.int64).tobytes()
        if key not in self._adj:
            self._adj[key] = self._build_adjacency(cols)
        return self._adj[key]

    def _build_adjacency(self, cols: np.ndarray):
        A = self.sim.knn_graph(cols, self.cfg["graph_neighbors"])
        A.data[:] = 1.0
        torch = self.torch
        with warnings.catch_warnings():  # "sparse CSR support is in beta" and similar
            warnings.simplefilter("ignore", UserWarning)
            adj = torch.sparse_csr_tensor(
                torch.as_tensor(A.indptr, dtype=torch.int64),
                torch.as_tensor(A.indices, dtype=torch.int64),
                torch.as_tensor(A.data, dtype=torch.float32), size=A.shape)
        return adj.to(self.device)

    def epoch_cells(self) -> np.ndarray:
        """The cells of one training epoch: all (shuffled) or a random subset (the cap)."""
        n = self.sp.shape[0]
        perm = self.rng.permutation(n)
        cap = self.cfg["max_cells_per_epoch"]
        return perm if cap is None or cap >= n else perm[:cap]

    # --- steps
    def train_autoencoder(self, nn_mod, bar):
        torch = self.torch
        ae = nn_mod.CellAutoEncoder(self.n_train).to(self.device)
        opt = torch.optim.Adam(ae.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(self.cfg["ae_epochs"]):
            ae.train()
            perm = self.epoch_cells()
            for sl in iter_batches(len(perm), self.cfg["batch_size"]):
                x = self.sp_rows(perm[sl])
                _, rec = ae(x)
                loss = torch.nn.functional.mse_loss(rec, x)
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.update(1)
        return ae, opt

    def neighbours(self, ae) -> np.ndarray:
        """Cosine k-nearest reference cells of every spatial cell in the AE space."""
        from sklearn.neighbors import NearestNeighbors

        torch = self.torch
        ae.eval()
        with torch.no_grad():
            emb_sp = np.concatenate([ae.encode(self.sp_rows(np.arange(sl.start, sl.stop)))
                                     .cpu().numpy() for sl in iter_batches(self.sp.shape[0],
                                                                           8192)])
            n_ref = self.ref_t.shape[0] if self.ref_t is not None else self.ref.shape[0]
            tr = np.arange(self.n_train)
            emb_ref = np.concatenate([ae.encode(self.ref_rows(np.arange(sl.start, sl.stop), tr))
                                      .cpu().numpy() for sl in iter_batches(n_ref, 8192)])
        knn = NearestNeighbors(n_neighbors=self.k, metric="cosine", algorithm="brute")
        knn.fit(emb_ref)
        return np.concatenate([knn.kneighbors(emb_sp[sl], return_distance=False)
                               for sl in iter_batches(len(emb_sp), 8192)]).astype(np.int64)

    def train_gnn(self, gnn, opt, cols: np.ndarray, target_cols: np.ndarray, nbr, epochs, bar):
        """E-step: fit the GNN to the measured spatial values of ``cols``."""
        nn_mod = _nn()
        adj = self.adjacency(cols)
        bs = self.batch_size(len(cols))
        for _ in range(epochs):
            gnn.train()
            perm = self.epoch_cells()
            for sl in iter_batches(len(perm), bs):
                cells = perm[sl]
                x = self.features(cells, cols, nbr)
                y = self.sp_rows(cells)[:, target_cols]
                loss = nn_mod.imputation_loss(gnn(x, adj), y, self.cfg["cosine_weight"])
                opt.zero_grad()
                loss.backward()
                opt.step()
            bar.update(1)

    def train_autoencoder_m(self, ae, ae_opt, gnn, nbr, bar):
        """M-step (eq. 11): refit the AE so that (AE output + GNN output) / 2 matches."""
        torch = self.torch
        cols = np.arange(self.n_train)
        adj = self.adjacency(cols)
        bs = self.batch_size(self.n_train)
        for _ in range(self.cfg["epochs"]):
            perm = self.epoch_cells()
            for sl in iter_batches(len(perm), bs):
                cells = perm[sl]
                y = self.sp_rows(cells)
                gnn.eval()
                with torch.no_grad():
                    g = gnn(self.features(cells, cols, nbr), adj)
                ae.train()
                _, rec = ae(y)
                loss = torch.nn.functional.mse_loss((rec + g) / 2, y)
                ae_opt.zero_grad()
                loss.backward()
                ae_opt.step()
            bar.update(1)

    def new_gnn(self):
        torch = self.torch
        gnn = _nn().GeneSAGE(self.k, dim=self.cfg["gnn_dim"], n_layers=self.cfg["gnn_layers"],
                             hidden_dim=self.cfg["hidden_dim"]).to(self.device)
        opt = torch.optim.Adam(gnn.parameters(), lr=self.cfg["lr"],
                               weight_decay=self.cfg["weight_decay"])
        return gnn, opt

    def predict(self, gnn, nbr, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Blend (eq. 12) for genes ``cols[out]``, graph over all ``cols``: (n_sp, len(out))."""
        torch = self.torch
        alpha = self.cfg["alpha"]
        adj = self.adjacency(cols)
        n = self.sp.shape[0]
        res = np.empty((n, len(out)), np.float32)
        out_t = torch.as_tensor(out, device=self.device)
        gnn.eval()
        with torch.no_grad():
            for sl in iter_batches(n, self.batch_size(len(cols))):
                x = self.features(np.arange(sl.start, sl.stop), cols, nbr)
                mean = x[:, out_t].mean(-1)
                if alpha > 0:
                    pred = alpha * gnn(x, adj)[:, out_t] + (1 - alpha) * mean
                else:
                    pred = mean
                res[sl] = pred.cpu().numpy()
        return res


def _fit_predict(prob: _Problem, bar) -> tuple[np.ndarray, np.ndarray, Any]:
    """The iterative AE/GNN fit (eqs. 1–11) and the blended prediction of the targets."""
    nn_mod = _nn()
    seed_everything(prob.seed)
    cfg = prob.cfg
    ae, ae_opt = prob.train_autoencoder(nn_mod, bar)
    gnn, opt = prob.new_gnn()
    train_cols = np.arange(prob.n_train)
    nbr = None
    for r in range(cfg["n_rounds"]):
        nbr = prob.neighbours(ae)
        if cfg["alpha"] > 0:
            prob.train_gnn(gnn, opt, train_cols, train_cols, nbr, cfg["epochs"], bar)
            if r < cfg["n_rounds"] - 1:
                prob.train_autoencoder_m(ae, ae_opt, gnn, nbr, bar)
    all_cols = np.arange(prob.n_all)
    pred = prob.predict(gnn, nbr, all_cols, np.arange(prob.n_train, prob.n_all))
    return pred, nbr, gnn


def _reliability(prob: _Problem, nbr: np.ndarray, pred_targets: np.ndarray, bar
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 13 by k-fold CV over the training genes.

    Each fold trains a fresh GNN on the other training genes (same neighbours), predicts
    the fold's genes; the cosine similarity of those out-of-fold predictions with the
    measured values is the target of an MLP that reads a gene's predicted profile.
    Returns ``(reliability of the targets, out-of-fold cosine of the training genes)``.
    """
    import torch
    from sklearn.model_selection import KFold

    nn_mod = _nn()
    cfg = prob.cfg
    n_sp = prob.sp.shape[0]
    n_folds = min(cfg["reliability_folds"], prob.n_train)
    oof = np.empty((n_sp, prob.n_train), np.float32)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=prob.seed % (2**31))
    for tr, te in kf.split(np.arange(prob.n_train)):
        gnn, opt = prob.new_gnn()
        if cfg["alpha"] > 0:
            prob.train_gnn(gnn, opt, tr, tr, nbr, cfg["epochs"], bar)
        cols = np.concatenate([tr, te])
        oof[:, te] = prob.predict(gnn, nbr, cols, np.arange(len(tr), len(cols)))
    measured = np.concatenate([to_dense(prob.sp[sl]) for sl in iter_batches(n_sp, 8192)])
    num = (oof * measured).sum(0)
    den = np.linalg.norm(oof, axis=0) * np.linalg.norm(measured, axis=0)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)
    cells = np.arange(n_sp)
    if n_sp > _RELIABILITY_MAX_CELLS:
        cells = np.sort(np.random.default_rng(prob.seed).choice(n_sp, _RELIABILITY_MAX_CELLS,
                                                                 replace=False))
    torch.manual_seed(prob.seed)
    mlp = nn_mod.ReliabilityMLP(len(cells)).to(prob.device)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, weight_decay=1e-2)
    X = torch.as_tensor(oof[cells].T.copy(), device=prob.device)
    y = torch.as_tensor(cos, device=prob.device)
    for _ in range(cfg["reliability_epochs"]):
        mlp.train()
        loss = torch.nn.functional.mse_loss(mlp(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mlp.eval()
    with torch.no_grad():
        rel = mlp(torch.as_tensor(pred_targets[cells].T.copy(), device=prob.device))
    rel = rel.clamp(-1.0, 1.0)  # it estimates a cosine similarity
    bar.update(1)
    return rel.cpu().numpy().astype(np.float32), cos


# ----------------------------------------------------------------------------- public API
def _prepare(adata_sp, adata_ref, *, genes, layer_sp, layer_ref, gene_embeddings,
             n_neighbors, alpha, case_sensitive, min_train):
    """Validate everything and build the matrices; nothing is written to the inputs."""
    for a, what in ((adata_sp, "adata_sp"), (adata_ref, "adata_ref")):
        if not isinstance(a, ad.AnnData):
            raise TypeError(f"{what} must be an AnnData, got {type(a).__name__}.")
        check_unique_var_names(a)
        if a.n_obs == 0 or a.n_vars == 0:
            raise ValueError(f"{what} is empty ({a.n_obs} cells × {a.n_vars} genes).")
    if not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
    if adata_ref.n_obs < n_neighbors:
        raise ValueError(f"adata_ref has {adata_ref.n_obs} cells but n_neighbors={n_neighbors} "
                         "reference neighbours are needed per spatial cell; pass a smaller "
                         "n_neighbors or a larger reference.")
    if alpha is not None and not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    sp_names = [str(g) for g in adata_sp.var_names]
    ref_names = [str(g) for g in adata_ref.var_names]
    sp_idx = _name_index(sp_names, case_sensitive, "adata_sp.var_names")
    ref_idx = _name_index(ref_names, case_sensitive, "adata_ref.var_names")
    how = "exactly" if case_sensitive else "ignoring case"
    shared = [g for g in sp_names if _fold(g, case_sensitive) in ref_idx]
    if genes is None:
        targets = [g for g in ref_names if _fold(g, case_sensitive) not in sp_idx]
        held = []
    else:
        if isinstance(genes, str):
            genes = [genes]
        genes = [str(g) for g in genes]
        unknown = [g for g in genes if _fold(g, case_sensitive) not in ref_idx]
        if unknown:
            raise KeyError(f"{len(unknown)} of the {len(genes)} requested gene(s) are not in "
                           f"adata_ref.var_names (matched {how}), e.g. {unknown[:5]}. "
                           "Pass genes measured by the reference.")
        if len(set(_fold(g, case_sensitive) for g in genes)) != len(genes):
            raise ValueError("`genes` has duplicates.")
        targets = [ref_names[ref_idx[_fold(g, case_sensitive)]] for g in genes]
        held = {_fold(g, case_sensitive) for g in genes}
    train = [g for g in shared if _fold(g, case_sensitive) not in set(held)]
    if len(train) < min_train:
        raise ValueError(f"Found {len(shared)} gene(s) shared by adata_sp.var_names and "
                         f"adata_ref.var_names (matched {how}); after holding out the requested "
                         f"genes {len(train)} remain to train on, but at least {min_train} are "
                         "needed. Check that both use the same gene naming (symbols vs ids, "
                         "case: try case_sensitive=False).")
    if not targets:
        raise ValueError("No genes to predict: every reference gene is measured in adata_sp. "
                         "Pass genes=[...] naming reference genes to predict.")
    Xsp, sp_scale = _normalised(adata_sp, layer_sp, "adata_sp")
    Xref, ref_scale = _normalised(adata_ref, layer_ref, "adata_ref")
    sp_cols = np.array([sp_idx[_fold(g, case_sensitive)] for g in train])
    ref_train = np.array([ref_idx[_fold(g, case_sensitive)] for g in train])
    ref_target = np.array([ref_idx[_fold(g, case_sensitive)] for g in targets])
    sp = _columns(Xsp, sp_cols)
    ref = _columns(Xref, np.concatenate([ref_train, ref_target]))
    all_names = [ref_names[i] for i in ref_train] + targets
    sim, n_emb = _similarity_for(all_names, gene_embeddings, ref, case_sensitive)
    info = {"spatial_scale": sp_scale, "reference_scale": ref_scale,
            "n_shared": len(shared), "n_train": len(train), "n_with_embedding": n_emb}
    return sp, ref, train, targets, sim, info


def _config(n_sp: int, *, n_neighbors, alpha, epochs, ae_epochs, n_rounds, batch_size,
            hidden_dim, graph_neighbors, reliability_folds, lr, weight_decay,
            max_cells_per_epoch):
    if max_cells_per_epoch is not None and (
            not isinstance(max_cells_per_epoch, int | np.integer) or max_cells_per_epoch < 1):
        raise ValueError("max_cells_per_epoch must be a positive integer or None, got "
                         f"{max_cells_per_epoch!r}.")
    if alpha is None:
        alpha = 0.7 if n_sp < 10_000 else 0.5
    for name, v in (("epochs", epochs), ("ae_epochs", ae_epochs), ("n_rounds", n_rounds),
                    ("batch_size", batch_size), ("hidden_dim", hidden_dim),
                    ("graph_neighbors", graph_neighbors)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if not isinstance(reliability_folds, int | np.integer) or reliability_folds in (1,) or \
            reliability_folds < 0:
        raise ValueError(f"reliability_folds must be 0 (off) or >= 2, got {reliability_folds!r}.")
    return {"n_neighbors": int(n_neighbors), "alpha": float(alpha), "epochs": int(epochs),
            "ae_epochs": int(ae_epochs), "n_rounds": int(n_rounds),
            "batch_size": int(batch_size), "hidden_dim": int(hidden_dim), "gnn_dim": 50,
            "gnn_layers": 2, "graph_neighbors": int(graph_neighbors), "cosine_weight": 2.0,
            "reliability_folds": int(reliability_folds), "reliability_epochs": 200,
            "lr": float(lr), "weight_decay": float(weight_decay),
            "max_cells_per_epoch": (None if max_cells_per_epoch is None
                                    else int(max_cells_per_epoch))}


def _run(sp, ref, n_train, sim, cfg, device, seed, progress):
    total = (cfg["ae_epochs"] + cfg["n_rounds"] * cfg["epochs"]
             + (cfg["n_rounds"] - 1) * cfg["epochs"]
             + (cfg["reliability_folds"] * cfg["epochs"] + 1 if cfg["reliability_folds"] else 0))
    prob = _Problem(sp, ref, n_train, sim, cfg, device, seed, progress)
    with progress_bar(total=total, desc="stImpute", progress=progress) as bar:
        pred, nbr, _ = _fit_predict(prob, bar)
        if cfg["reliability_folds"]:
            rel, _ = _reliability(prob, nbr, pred, bar)
        else:
            rel = np.full(pred.shape[1], np.nan, np.float32)
    return pred, rel


def stimpute(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    genes: Sequence[str] | None = None,
    layer_sp: str | None = None,
    layer_ref: str | None = None,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    n_neighbors: int = 50,
    alpha: float | None = None,
    epochs: int = 10,
    ae_epochs: int = 30,
    n_rounds: int = 2,
    batch_size: int = 512,
    hidden_dim: int = 64,
    graph_neighbors: int = 10,
    reliability_folds: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_cells_per_epoch: int | None = 10_000,
    case_sensitive: bool = True,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.STIMPUTE,
    return_adata: bool = False,
    progress: bool = True,
    copy: bool = False,
) -> ad.AnnData | None:
    r"""Impute unmeasured genes of spatial cells from a scRNA-seq reference (stImpute).

    Zeng et al. 2024, Commun Biol 7:1271, §Methods:

    1. An autoencoder (eqs. 1–3; ``genes → 100 → genes``, ReLU) is trained on the
       spatial cells' shared genes; its encoder embeds spatial and reference cells in one
       space, where each spatial cell gets its ``n_neighbors`` cosine-nearest reference
       cells.
    2. A GraphSAGE network (eqs. 7–8; :class:`torch_geometric.nn.SAGEConv`, mean
       aggregation, 2 layers of width 50) runs over the gene graph (eqs. 4–6, see
       :func:`stimpute_gene_graph`); the features of a gene are its expression in the
       cell's neighbours; an MLP (eq. 9) gives one value per gene. The loss (eq. 10) is
       MSE + 2 × (cell-level + gene-level cosine loss), the weight of the authors' code.
    3. AE and GNN are trained alternately for ``n_rounds`` rounds (eq. 11): neighbours
       from the AE → GNN fitted to the measured genes → AE refitted so that
       (AE output + GNN output) / 2 matches the measurement → new neighbours.
    4. Output (eq. 12): ``alpha`` · GNN + (1 − ``alpha``) · mean of the k neighbours'
       expression.
    5. Reliability (eq. 13): the shared genes are split into ``reliability_folds``
       folds; a GNN trained on the other folds (same neighbours) predicts each fold, and
       an MLP learns the out-of-fold cosine similarity from a gene's predicted profile
       (over all spatial cells, or a seeded subset of 4,096 when there are more); it then
       scores every predicted gene. The MLP ends in a linear layer (as the authors' code),
       so its output is clipped to [-1, 1], the range of the cosine it estimates.

    Everything runs in mini-batches of spatial cells: the ``(batch, genes, k)`` features
    are gathered per batch (the batch shrinks so that one block holds at most 2\ :sup:`23`
    values), never for all cells at once.

    Choices where the paper is open (documented here): the MLP head is
    ``50 → 2·hidden_dim → hidden_dim → 1`` with ``hidden_dim=64`` (the authors' code uses
    256 below 10,000 cells and 32 above); the graph keeps each gene's top
    ``graph_neighbors`` edges (the paper's graph is dense); the final neighbours are
    those of the last round; Adam with ``lr`` for the GNN.

    Parameters
    ----------
    adata_sp
        Spatial cells × measured genes. **Raw counts** (integers: normalised here by
        dividing by the cell total, scaling by the median total and log1p, as the paper
        does) or **already normalised, log1p** values (any non-integer input is used as
        given). Spatial coordinates in ``obsm['spatial']`` are carried over with
        ``return_adata=True``.
    adata_ref
        Reference cells × genes, raw counts or normalised (detected the same way).
    genes
        Reference genes to predict. ``None``: every reference gene not measured in
        ``adata_sp``. Genes listed here that ``adata_sp`` does measure are held out of
        training and predicted (for validation).
    layer_sp, layer_ref
        Layers holding the input; ``None`` uses ``.X``.
    gene_embeddings
        Protein embeddings, genes × dimensions DataFrame (e.g.
        :func:`sctorch.pp.esm_gene_embeddings`, :func:`sctorch.datasets.esm2_gene_embeddings`)
        or mapping gene → vector. Genes without one use reference-expression similarity
        (eq. 5); ``None`` builds the whole graph from expression.
    n_neighbors
        Reference neighbours per spatial cell (``k = 50`` in the paper).
    alpha
        Weight of the GNN in eq. 12; ``None``: 0.7 below 10,000 spatial cells, else 0.5.
        ``alpha=0`` returns the k-NN mean only (the GNN is not trained).
    epochs
        Passes over the spatial cells per GNN fit and per AE refit (eq. 11 steps).
    ae_epochs
        Passes of the initial autoencoder training.
    n_rounds
        Rounds of the alternating AE/GNN training (2 in the paper).
    batch_size
        Spatial cells per mini-batch (upper bound; see above).
    hidden_dim
        Width of the MLP head.
    graph_neighbors
        Neighbours per gene in the gene graph.
    reliability_folds
        Folds of the reliability cross-validation; ``0`` skips it (reliability NaN).
    lr, weight_decay
        Adam settings of the GNN.
    max_cells_per_epoch
        Cells visited per training epoch (AE, GNN, AE refit): all cells, shuffled, when
        there are fewer, else a fresh random subset of this size each epoch; ``None``
        always uses every cell (the paper's full passes). Bounds the training cost of very
        large sections; prediction always covers every cell.
    case_sensitive
        Match gene names exactly (default) or ignoring case; ``var_names`` are never
        renamed (outputs use the reference's spelling).
    device
        Torch device; ``None``: CUDA, then MPS, then CPU.
    rng
        Seed; the same seed on the same device gives the same result.
    key_added
        Key of the outputs.
    return_adata
        Return a new AnnData of the predicted genes instead of writing into ``adata_sp``.
    progress
        Show a progress bar.
    copy
        Return a modified copy of ``adata_sp`` instead of writing in place.

    Returns
    -------
    With ``return_adata=True``: a new AnnData, spatial cells × predicted genes (``X``
    float32, on the scale of the normalised input), with ``obs`` and ``obsm['spatial']``
    copied, ``var['reliability']`` and ``uns[key_added]`` (``adata_sp`` is left as it
    was). Otherwise ``None`` (or the copy when ``copy=True``), having written

    - ``obsm[key_added]``: DataFrame, spatial cells × predicted genes (float32);
    - ``uns[key_added]``: ``{'genes', 'reliability'`` (per gene, aligned with
      ``genes``), ``'params'}``.

    Raises
    ------
    KeyError
        If a layer is missing or ``genes`` names genes absent from the reference.
    ValueError
        If input values are non-finite or negative, ``var_names`` have duplicates, too
        few genes are shared (the count and the matching mode are reported), the
        reference has fewer than ``n_neighbors`` cells, embeddings are inconsistent, or
        a setting is out of range. The inputs are left unchanged.
    ImportError
        If torch-geometric is not installed.
    """
    cfg = _config(adata_sp.n_obs, n_neighbors=n_neighbors, alpha=alpha, epochs=epochs,
                  ae_epochs=ae_epochs, n_rounds=n_rounds, batch_size=batch_size,
                  hidden_dim=hidden_dim, graph_neighbors=graph_neighbors,
                  reliability_folds=reliability_folds, lr=lr, weight_decay=weight_decay,
                  max_cells_per_epoch=max_cells_per_epoch)
    sp, ref, train, targets, sim, info = _prepare(
        adata_sp, adata_ref, genes=genes, layer_sp=layer_sp, layer_ref=layer_ref,
        gene_embeddings=gene_embeddings, n_neighbors=n_neighbors, alpha=alpha,
        case_sensitive=case_sensitive, min_train=max(2, reliability_folds))
    _nn()
    dev = resolve_device(device)
    seed = seed_int(rng)
    logger.info("stImpute: %d spatial cells, %d training genes, %d genes to predict",
                adata_sp.n_obs, len(train), len(targets))
    pred, rel = _run(sp, ref, len(train), sim, cfg, dev, seed, progress)
    params = make_params(genes="None" if genes is None else list(targets), layer_sp=layer_sp,
                         layer_ref=layer_ref, n_neighbors=n_neighbors, alpha=cfg["alpha"],
                         epochs=epochs, ae_epochs=ae_epochs, n_rounds=n_rounds,
                         batch_size=batch_size, hidden_dim=hidden_dim,
                         graph_neighbors=graph_neighbors, reliability_folds=reliability_folds,
                         lr=lr, weight_decay=weight_decay,
                         max_cells_per_epoch=max_cells_per_epoch, case_sensitive=case_sensitive,
                         gene_embeddings=gene_embeddings is not None, seed=seed,
                         rng=rng, device=str(dev), train_genes=list(train), **info)
    record = {"genes": np.asarray(targets, dtype=object), "reliability": rel, "params": params}
    if return_adata:
        out = ad.AnnData(pred, obs=adata_sp.obs.copy(),
                         var=pd.DataFrame({"reliability": rel}, index=pd.Index(targets)))
        if _keys.SPATIAL in adata_sp.obsm:
            out.obsm[_keys.SPATIAL] = np.array(adata_sp.obsm[_keys.SPATIAL], copy=True)
        out.uns[key_added] = record
        return out
    target = adata_sp.copy() if copy else adata_sp
    target.obsm[key_added] = pd.DataFrame(pred, index=target.obs_names.copy(),
                                          columns=pd.Index(targets))
    target.uns[key_added] = record
    return target if copy else None


def stimpute_cv(
    adata_sp: ad.AnnData,
    adata_ref: ad.AnnData,
    *,
    n_folds: int = 5,
    layer_sp: str | None = None,
    layer_ref: str | None = None,
    gene_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    n_neighbors: int = 50,
    alpha: float | None = None,
    epochs: int = 10,
    ae_epochs: int = 30,
    n_rounds: int = 2,
    batch_size: int = 512,
    hidden_dim: int = 64,
    graph_neighbors: int = 10,
    reliability_folds: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    max_cells_per_epoch: int | None = 10_000,
    case_sensitive: bool = True,
    device: str | None = None,
    rng: RandomState = 0,
    key_added: str = _keys.STIMPUTE_CV,
    progress: bool = True,
) -> pd.DataFrame:
    """The paper's evaluation: k-fold cross-validation over the shared genes.

    The genes shared by ``adata_sp`` and ``adata_ref`` are split into ``n_folds`` folds
    (shuffled, seeded); each fold is predicted by :func:`stimpute` trained on the other
    folds (Zeng et al. 2024, §Results "5-fold cross-validation"). The held-out
    predictions are compared with the measured values on the normalised scale.

    Parameters
    ----------
    adata_sp, adata_ref
        As in :func:`stimpute` (raw counts or normalised; detected).
    n_folds
        Number of gene folds (5 in the paper); at least 2.
    layer_sp, layer_ref, gene_embeddings, n_neighbors, alpha
        As in :func:`stimpute`, for every fold.
    epochs, ae_epochs, n_rounds, batch_size, hidden_dim, graph_neighbors
        As in :func:`stimpute`, for every fold.
    reliability_folds, lr, weight_decay, max_cells_per_epoch, case_sensitive
        As in :func:`stimpute`, for every fold.
    device, rng, progress
        As in :func:`stimpute`, for every fold (every fold uses the same seed).
    key_added
        Name of the layer written to ``adata_sp``.

    Returns
    -------
    DataFrame indexed by the shared genes (``adata_sp`` spelling) with columns
    ``cosine``, ``pearson``, ``mse`` (held-out prediction vs measured, per gene across
    cells, on the normalised scale), ``reliability`` (eq. 13 score from the fold's model)
    and ``fold``. Writes ``adata_sp.layers[key_added]`` (``n_obs × n_vars`` float32; the
    held-out prediction of every shared gene, NaN for genes absent from the reference)
    and ``adata_sp.uns[key_added]`` = ``{'params'}``.

    Raises
    ------
    ValueError, KeyError
        As :func:`stimpute`; also if fewer than ``n_folds`` genes are shared or
        ``n_folds < 2``. ``adata_sp`` is left unchanged on error.
    """
    from sklearn.model_selection import KFold

    from ..metrics import pairwise_scores

    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
    check_unique_var_names(adata_sp)
    check_unique_var_names(adata_ref)
    ref_idx = _name_index([str(g) for g in adata_ref.var_names], case_sensitive,
                          "adata_ref.var_names")
    shared = [str(g) for g in adata_sp.var_names if _fold(str(g), case_sensitive) in ref_idx]
    if len(shared) < n_folds:
        raise ValueError(f"Found {len(shared)} gene(s) shared by adata_sp and adata_ref "
                         f"(matched {'exactly' if case_sensitive else 'ignoring case'}); "
                         f"{n_folds}-fold cross-validation needs at least {n_folds}.")
    cfg = _config(adata_sp.n_obs, n_neighbors=n_neighbors, alpha=alpha, epochs=epochs,
                  ae_epochs=ae_epochs, n_rounds=n_rounds, batch_size=batch_size,
                  hidden_dim=hidden_dim, graph_neighbors=graph_neighbors,
                  reliability_folds=reliability_folds, lr=lr, weight_decay=weight_decay,
                  max_cells_per_epoch=max_cells_per_epoch)
    seed = seed_int(rng)
    kf = KFold(n_splits=n_folds, shuffle=True, random_state=seed % (2**31))
    folds = list(kf.split(np.arange(len(shared))))
    # validate every fold before any training
    prepared = []
    for _, te in folds:
        held = [shared[i] for i in te]
        ref_names = [adata_ref.var_names[ref_idx[_fold(g, case_sensitive)]] for g in held]
        prepared.append((*_prepare(
            adata_sp, adata_ref, genes=ref_names, layer_sp=layer_sp, layer_ref=layer_ref,
            gene_embeddings=gene_embeddings, n_neighbors=n_neighbors, alpha=alpha,
            case_sensitive=case_sensitive, min_train=max(2, reliability_folds)), held))
    _nn()
    dev = resolve_device(device)
    sp_pos = {g: i for i, g in enumerate(map(str, adata_sp.var_names))}
    layer = np.full((adata_sp.n_obs, adata_sp.n_vars), np.nan, np.float32)
    rel_all = pd.Series(np.nan, index=pd.Index(shared), dtype=np.float64)
    fold_of = pd.Series(0, index=pd.Index(shared), dtype=np.int64)
    info = prepared[0][5]
    for f, (sp, ref, train, _targets, sim, _info, held) in enumerate(
            progress_bar(prepared, desc="stImpute CV", progress=progress)):
        pred, rel = _run(sp, ref, len(train), sim, cfg, dev, seed, progress=False)
        cols = [sp_pos[g] for g in held]
        layer[:, cols] = pred
        rel_all[held] = rel
        fold_of[held] = f
    Xsp, _ = _normalised(adata_sp, layer_sp, "adata_sp")
    cols = np.array([sp_pos[g] for g in shared])
    scores = pairwise_scores(_columns(Xsp, cols), layer[:, cols], axis="gene")
    scores.index = pd.Index(shared)
    scores["reliability"] = rel_all
    scores["fold"] = fold_of
    adata_sp.layers[key_added] = layer
    adata_sp.uns[key_added] = {"params": make_params(
        n_folds=n_folds, layer_sp=layer_sp, layer_ref=layer_ref, n_neighbors=n_neighbors,
        alpha=cfg["alpha"], epochs=epochs, ae_epochs=ae_epochs, n_rounds=n_rounds,
        batch_size=batch_size, hidden_dim=hidden_dim, graph_neighbors=graph_neighbors,
        reliability_folds=reliability_folds, lr=lr, weight_decay=weight_decay,
        max_cells_per_epoch=max_cells_per_epoch,
        case_sensitive=case_sensitive, gene_embeddings=gene_embeddings is not None,
        seed=seed, rng=rng, device=str(dev), spatial_scale=info["spatial_scale"],
        reference_scale=info["reference_scale"])}
    return scores
