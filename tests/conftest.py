"""Shared fixtures: real-data access that skips (or fails in CI) when data are absent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from sctorch.datasets import data_dir


def require_data(relative: str):
    """Skip the test if ``relative`` is absent from the data directory (fail in CI)."""
    base = data_dir()
    if base is None or not (base / relative).exists():
        msg = f"real data {relative!r} not found (set SCTORCH_DATA_DIR)"
        if os.environ.get("SCTORCH_REQUIRE_DATA") == "1":
            pytest.fail(msg + " and SCTORCH_REQUIRE_DATA=1")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def intestine_reference():
    """The TCER/SAVER high-quality reference of the full intestine data (1,037 × 2,781)."""
    require_data("intestine_moor2018/intestine_moor2018.h5ad")
    import sctorch as sct

    return sct.pp.select_reference(sct.datasets.intestine_moor2018())


@pytest.fixture
def small_counts():
    """A small random counts AnnData (60 cells × 40 genes, CSR, float32 integers)."""
    import anndata as ad

    rng = np.random.default_rng(0)
    X = rng.negative_binomial(2, 0.3, size=(60, 40)).astype(np.float32)
    X[:, :5] = 0
    X[0, 0] = 3
    a = ad.AnnData(sparse.csr_matrix(X))
    a.obs_names = [f"c{i}" for i in range(60)]
    a.var_names = [f"g{j}" for j in range(40)]
    return a


# ----------------------------------------------------------------------------- input unchanged
# The one helper for "the input is left unchanged": snap = snapshot(adata), run the call,
# assert_unchanged(adata, snap). It copies everything an AnnData holds (values, not only keys).


def _values(x):
    """A dense in-memory copy of a matrix: numpy, scipy sparse, or a backed (on-disk) one."""
    if hasattr(x, "to_memory"):  # anndata's backed sparse dataset
        x = x.to_memory()
    elif isinstance(x, h5py.Dataset):  # a backed dense X
        x = x[()]
    if sparse.issparse(x):
        return x.toarray()
    return pd.DataFrame(x).copy() if isinstance(x, pd.DataFrame) else np.array(x, copy=True)


def _kind(x) -> str:
    """Type, dtype and sparse format of a matrix, e.g. ``csr_matrix float32 csr``."""
    fmt = getattr(x, "format", "") if sparse.issparse(x) else ""
    return f"{type(x).__name__} {getattr(x, 'dtype', '')} {fmt}".strip()


def _freeze(value):
    """A comparable, copied form of any ``uns`` value (NaN equals NaN)."""
    if sparse.issparse(value):
        value = value.toarray()
    if isinstance(value, np.ndarray | np.generic):
        return ("array", value.dtype.str, value.shape, np.asarray(value).tobytes())
    if isinstance(value, pd.DataFrame | pd.Series):
        dtypes = value.dtypes if isinstance(value, pd.DataFrame) else [value.dtype]
        return (
            "frame",
            value.to_json(orient="split", default_handler=str),
            tuple(map(str, dtypes)),
        )
    if isinstance(value, dict) or hasattr(value, "keys"):
        return ("dict", tuple(sorted((str(k), _freeze(value[k])) for k in value.keys())))
    if isinstance(value, list | tuple):
        return ("list", tuple(_freeze(v) for v in value))
    return ("value", repr(value))


def _file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(adata) -> dict:
    """Everything an AnnData holds, copied, to check later with :func:`assert_unchanged`.

    Covers the shape and names, whether it is a view or backed, ``X`` (values, type, dtype,
    sparse format), the contents of ``layers``, ``obsm``, ``varm``, ``obsp`` and ``varp``,
    ``obs`` and ``var`` (columns, values and dtypes), ``uns`` (keys and nested values),
    ``raw``, and for a backed AnnData the bytes of its file.
    """
    mappings = {
        name: {k: (_kind(v), _values(v)) for k, v in getattr(adata, name).items()}
        for name in ("layers", "obsm", "varm", "obsp", "varp")
    }
    raw = adata.raw
    return {
        "is_view": adata.is_view,
        "isbacked": adata.isbacked,
        "file": _file_digest(adata.filename) if adata.isbacked else None,
        "shape": adata.shape,
        "obs_names": list(adata.obs_names),
        "var_names": list(adata.var_names),
        "X": (_kind(adata.X), None if adata.X is None else _values(adata.X)),
        **mappings,
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": _freeze(adata.uns),
        "raw": None if raw is None else (_values(raw.X), list(raw.var_names), raw.var.copy()),
    }


def assert_unchanged(adata, snap: dict, what: str = "adata") -> None:
    """Assert that ``adata`` still holds what :func:`snapshot` recorded; names the change."""
    now = snapshot(adata)
    for key, was in snap.items():
        got = now[key]
        where = f"{what}.{key}"
        if isinstance(was, pd.DataFrame):
            pd.testing.assert_frame_equal(got, was, obj=where)
        elif key == "X":
            assert got[0] == was[0], f"{where} changed type: {was[0]} -> {got[0]}"
            np.testing.assert_array_equal(got[1], was[1], err_msg=f"{where} was modified")
        elif key in ("layers", "obsm", "varm", "obsp", "varp"):
            assert sorted(got) == sorted(was), (
                f"{where} keys changed: {sorted(was)} -> {sorted(got)}"
            )
            for k, (kind, values) in was.items():
                assert got[k][0] == kind, f"{where}[{k!r}] changed type: {kind} -> {got[k][0]}"
                if isinstance(values, pd.DataFrame):
                    pd.testing.assert_frame_equal(got[k][1], values, obj=f"{where}[{k!r}]")
                else:
                    np.testing.assert_array_equal(got[k][1], values, err_msg=f"{where}[{k!r}]")
        elif key == "raw" and was is not None and got is not None:
            np.testing.assert_array_equal(got[0], was[0], err_msg=f"{where}.X was modified")
            assert got[1] == was[1], f"{where}.var_names changed"
            pd.testing.assert_frame_equal(got[2], was[2], obj=f"{where}.var")
        elif key == "uns":
            changed = sorted(set(was[1]) ^ set(got[1]))
            assert got == was, f"{where} changed at {sorted({k for k, _ in changed})}"
        else:
            assert got == was, f"{where} changed: {was!r} -> {got!r}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest (and most reproducibly) on one intra-op thread."""
    import torch

    torch.set_num_threads(1)
