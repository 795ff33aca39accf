"""ESM-2 protein embeddings of genes, the node features of stImpute's gene graph."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .. import _keys
from .._utils import iter_batches, progress_bar, resolve_device

logger = logging.getLogger("sctorch")

_ESM_HINT = "esm_gene_embeddings needs fair-esm: `pip install fair-esm`."
_VALID = set("ACDEFGHIKLMNPQRSTUVWYXBZUO")


def _read_fasta(path: Path) -> dict[str, list[str]]:
    """Gene → sequences from a FASTA file.

    The gene is the ``GN=`` field of a UniProt header when present, else the first
    whitespace-separated token of the header.
    """
    out: dict[str, list[str]] = {}
    name, chunks = None, []

    def flush():
        if name is not None:
            out.setdefault(name, []).append("".join(chunks))

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                flush()
                header = line[1:]
                gn = [t[3:] for t in header.split() if t.startswith("GN=")]
                name = gn[0] if gn else (header.split()[0] if header.split() else "")
                chunks = []
            else:
                chunks.append(line)
    flush()
    return out


def _clean(seq: str, gene: str) -> str:
    s = "".join(str(seq).split()).upper().rstrip("*")
    bad = set(s) - _VALID
    if not s or bad:
        raise ValueError(
            f"The protein sequence of {gene!r} is empty or holds characters that "
            f"are not amino-acid letters ({sorted(bad)[:5]}); pass one-letter "
            "amino-acid sequences."
        )
    return s


def _load_model(model: str):
    """``(model, alphabet, identifier)`` from a fair-esm name or a local checkpoint.

    Local checkpoints are read with ``torch.load(weights_only=True)`` (only
    :class:`argparse.Namespace` is allowed besides tensors, for the ``cfg`` entry), so
    no code in the file is executed.
    """
    import argparse

    import torch

    try:
        import esm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_ESM_HINT) from err
    path = Path(os.fspath(model)).expanduser()
    with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Regression weights not found")
        if path.is_file():
            data = _safe_torch_load(path)
            if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
                raise ValueError(
                    f"{str(path)!r} is not a fair-esm checkpoint (a dict with "
                    "'model' and 'cfg' entries)."
                )
            reg_path = Path(str(path.with_suffix("")) + "-contact-regression.pt")
            reg = _safe_torch_load(reg_path) if reg_path.is_file() else None
            net, alphabet = esm.pretrained.load_model_and_alphabet_core(path.stem, data, reg)
            st = path.stat()
            ident = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        else:
            if os.sep in str(model) or str(model).endswith(".pt"):
                raise FileNotFoundError(f"ESM checkpoint {str(path)!r} not found.")
            if not hasattr(esm.pretrained, str(model)):
                raise ValueError(
                    f"Unknown fair-esm model {model!r}; pass a name such as "
                    "'esm2_t33_650M_UR50D' or the path of a local checkpoint."
                )
            net, alphabet = esm.pretrained.load_model_and_alphabet(str(model))
            ident = f"name:{model}"
    net.eval()
    return net, alphabet, ident


def _safe_torch_load(path: Path):
    """``torch.load(weights_only=True)`` of a checkpoint; anything else refused in our words.

    torch's own message for a pickle holding other Python objects advises
    ``weights_only=False``, which would run the code in the file; it is not passed on.

    Raises
    ------
    ValueError
        If the file is not a checkpoint of tensors (and plain containers) that can be read
        without executing code.
    """
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as err:
        kind = type(err).__name__
        raise ValueError(
            f"{str(path)!r} is not a fair-esm checkpoint that can be read safely ({kind}: "
            "it holds Python objects other than tensors, or is not a torch file). sctorch "
            "reads checkpoints with torch.load(weights_only=True) and never runs code from "
            "a file; pass a checkpoint downloaded from fair-esm (esm2_*.pt) or a model "
            "name such as 'esm2_t33_650M_UR50D'."
        ) from None


def _model_ident(model: str) -> str | None:
    """The cache identifier of ``model`` without loading it (``None`` if not resolvable)."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_file():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"name:{model}"


def esm_gene_embeddings(
    genes: Sequence[str] | ad.AnnData,
    sequences: Mapping[str, str | Sequence[str]] | str | os.PathLike,
    *,
    model: str | os.PathLike = "esm2_t33_650M_UR50D",
    layer: int | None = None,
    batch_size: int = 8,
    max_length: int = 1022,
    cache: str | os.PathLike | None = None,
    device: str | None = None,
    key_added: str = _keys.ESM2,
    progress: bool = True,
) -> pd.DataFrame | None:
    """Mean-pooled ESM-2 representations of the proteins that genes encode.

    stImpute's gene embeddings (Zeng et al. 2024, Commun Biol 7:1271, §Methods "Gene
    network"): each gene's protein sequence is run through the protein language model
    ESM-2 (Lin et al. 2023, Science 379:1123, via ``fair-esm``) and the per-residue
    representations of one layer are averaged over the residues (BOS/EOS excluded).

    Choices the paper leaves open:

    - **isoforms**: when a gene has several sequences the longest is used (ties: the
      first given);
    - **long proteins**: ESM-2 reads at most 1,022 residues; a longer sequence is cut into
      consecutive windows of at most ``max_length`` residues and the representation is
      the mean over all residues of all windows;
    - trailing ``*`` stop symbols and whitespace are removed, letters upper-cased.

    Parameters
    ----------
    genes
        Gene names, or an AnnData whose ``var_names`` are the genes.
    sequences
        Mapping gene → amino-acid sequence (or a list of isoforms), or the path of a
        FASTA file (gene = the header's UniProt ``GN=`` field, else its first token).
    model
        A fair-esm model name (weights downloaded by fair-esm where a network exists, e.g.
        ``"esm2_t33_650M_UR50D"``; stImpute used ``"esm2_t36_3B_UR50D"``) or the path of a
        local checkpoint in fair-esm's format (read as in
        :func:`esm.pretrained.load_model_and_alphabet_local`, with
        ``torch.load(weights_only=True)``).
    layer
        Representation layer; ``None`` uses the last.
    batch_size
        Sequences (windows) per forward pass.
    max_length
        Window length in residues (at most 1,022).
    cache
        Directory of cached embeddings, one ``.npy`` file per (model, layer, window
        length, sequence), keyed by a SHA-256 of those; ``None`` disables caching. Only
        missing entries are computed; the model is not loaded when all are cached.
    device
        Torch device; ``None``: CUDA, then MPS, then CPU.
    key_added
        With an AnnData: the ``varm`` key written.
    progress
        Show a progress bar.

    Returns
    -------
    For a list of genes: DataFrame of float32, **genes with a sequence × embedding
    dimensions** (``embed_dim`` of the model, e.g. 1,280 or 2,560), in the order given;
    genes without a sequence are left out (logged). For an AnnData: ``None``, having
    written ``varm[key_added]`` (``n_vars × dims``, NaN rows for genes without a
    sequence). Usable as ``gene_embeddings`` of :func:`sctorch.tl.stimpute`.

    Raises
    ------
    ValueError
        If no gene has a sequence, a sequence is not amino-acid letters, ``layer``,
        ``batch_size`` or ``max_length`` is out of range, or the checkpoint is not in
        fair-esm's format.
    FileNotFoundError
        If a FASTA or checkpoint path does not exist.
    ImportError
        If fair-esm is not installed.
    """
    import torch

    adata = genes if isinstance(genes, ad.AnnData) else None
    names = [str(g) for g in (adata.var_names if adata is not None else genes)]
    if isinstance(sequences, str | os.PathLike) and not isinstance(sequences, Mapping):
        p = Path(sequences)
        if not p.is_file():
            raise FileNotFoundError(f"FASTA file {str(p)!r} not found.")
        sequences = _read_fasta(p)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(max_length, int) or not 1 <= max_length <= 1022:
        raise ValueError(f"max_length must be an integer in [1, 1022], got {max_length!r}.")
    chosen: dict[str, str] = {}
    for g in names:
        if g not in sequences:
            continue
        s = sequences[g]
        isoforms = [s] if isinstance(s, str) else list(s)
        cleaned = [_clean(x, g) for x in isoforms]
        if cleaned:
            chosen[g] = max(cleaned, key=len)  # max keeps the first of equal lengths
    missing = [g for g in names if g not in chosen]
    if not chosen:
        raise ValueError(
            f"None of the {len(names)} genes has a protein sequence in "
            f"`sequences` (it names e.g. {list(sequences)[:5]}); check that "
            "both use the same gene names."
        )
    if missing:
        logger.info(
            "esm_gene_embeddings: %d gene(s) without a sequence, e.g. %s", len(missing), missing[:5]
        )

    cache_dir = Path(cache) if cache is not None else None
    ident = _model_ident(model)

    def key(seq: str, lay: int | str) -> str:
        h = hashlib.sha256(f"{ident}|{lay}|{max_length}|{seq}".encode()).hexdigest()
        return h

    lay_key = "last" if layer is None else int(layer)
    result: dict[str, np.ndarray] = {}
    todo = []
    for g, s in chosen.items():
        f = cache_dir / f"{key(s, lay_key)}.npy" if cache_dir is not None else None
        if f is not None and f.is_file():
            result[g] = np.load(f, allow_pickle=False)
        else:
            todo.append(g)
    if todo:
        net, alphabet, _ = _load_model(str(model))
        n_layers = net.num_layers
        use_layer = n_layers if layer is None else int(layer)
        if not 0 <= use_layer <= n_layers:
            raise ValueError(f"layer must be in [0, {n_layers}] for this model, got {layer}.")
        dev = resolve_device(device)
        net = net.to(dev)
        convert = alphabet.get_batch_converter()
        # windows of every sequence; sums and counts of residue representations per gene
        windows = [
            (g, s[i : i + max_length])
            for g in todo
            for s in [chosen[g]]
            for i in range(0, len(s), max_length)
        ]
        windows.sort(key=lambda w: len(w[1]))
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        bar = progress_bar(total=len(windows), desc="ESM-2", progress=progress)
        with torch.no_grad():
            for sl in iter_batches(len(windows), batch_size):
                batch = windows[sl]
                _, _, tokens = convert([(g, w) for g, w in batch])
                reps = net(tokens.to(dev), repr_layers=[use_layer])["representations"][use_layer]
                reps = reps.float().cpu().numpy()
                for i, (g, w) in enumerate(batch):
                    r = reps[i, 1 : len(w) + 1].astype(np.float64).sum(0)
                    sums[g] = sums.get(g, 0.0) + r
                    counts[g] = counts.get(g, 0) + len(w)
                bar.update(len(batch))
        bar.close()
        for g in todo:
            vec = (sums[g] / counts[g]).astype(np.float32)
            result[g] = vec
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                np.save(cache_dir / f"{key(chosen[g], lay_key)}.npy", vec, allow_pickle=False)
    order = [g for g in names if g in result]
    df = pd.DataFrame(np.stack([result[g] for g in order]), index=pd.Index(order), dtype=np.float32)
    if adata is None:
        return df
    full = np.full((adata.n_vars, df.shape[1]), np.nan, np.float32)
    pos = {g: i for i, g in enumerate(names)}
    full[[pos[g] for g in order]] = df.to_numpy()
    adata.varm[key_added] = full
    return None
