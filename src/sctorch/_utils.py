"""Shared helpers: device resolution, seeding, input access and checks, progress bars.

One concept, one place: methods use these instead of re-implementing them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    import anndata as ad

logger = logging.getLogger("sctorch")

RandomState = int | np.random.Generator | None


# ----------------------------------------------------------------------------- seeding
def _check_seed(rng) -> None:
    """Refuse a seed numpy would refuse (negative, bool, other types), in sctorch's words."""
    if isinstance(rng, bool) or not (
        rng is None or isinstance(rng, int | np.integer | np.random.Generator)
    ):
        raise TypeError(
            f"rng must be an int seed (>= 0), a numpy.random.Generator or None, got "
            f"{type(rng).__name__} {rng!r:.40}."
        )
    if isinstance(rng, int | np.integer) and rng < 0:
        raise ValueError(
            f"rng must be a non-negative integer seed (0 to 2**32 - 1, or a "
            f"numpy.random.Generator), got {int(rng)}; pass e.g. rng=0."
        )


def get_rng(rng: RandomState) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` for an int seed, a Generator or ``None``.

    Raises
    ------
    TypeError
        If ``rng`` is not an int, a Generator or ``None`` (a bool is refused).
    ValueError
        If ``rng`` is a negative integer.
    """
    _check_seed(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def seed_int(rng: RandomState) -> int:
    """Derive one integer seed (for torch, scikit-learn, POT) from ``rng``.

    ``rng`` is checked as in :func:`get_rng`.
    """
    _check_seed(rng)
    if isinstance(rng, int | np.integer):
        return int(rng)
    return int(get_rng(rng).integers(0, 2**31 - 1))


def accepts_random_state(func: Callable) -> Callable:
    """Decorator: accept ``random_state=`` as the alias of ``rng=``, as Scanpy now does.

    Scanpy moved to ``rng`` (SPEC 7) and keeps ``random_state`` as the older spelling; a
    Scanpy user's ``random_state=0`` works the same as ``rng=0``. The wrapped function's
    signature shows ``random_state`` (default ``None``) right after ``rng``.

    Raises
    ------
    TypeError
        If both ``rng`` and ``random_state`` are given.
    """
    sig = inspect.signature(func)
    if "rng" not in sig.parameters:  # pragma: no cover - a programming error
        raise TypeError(f"{func.__qualname__} has no rng parameter")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "random_state" in kwargs:
            value = kwargs.pop("random_state")
            if "rng" in kwargs:
                raise TypeError(
                    f"{func.__name__}() got both rng= and its alias random_state=; "
                    "pass one of them."
                )
            kwargs["rng"] = value
        return func(*args, **kwargs)

    params = []
    for p in sig.parameters.values():
        params.append(p)
        if p.name == "rng":
            params.append(
                inspect.Parameter(
                    "random_state",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation="RandomState | None",
                )
            )
    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's and numpy's global generators seeded with ``seed``.

    Inside the block, torch (CPU and, when available, CUDA) and numpy's legacy global
    state are seeded as if by ``torch.manual_seed(seed)`` and ``np.random.seed(seed)``,
    so weight initialisation and dropout are reproducible; on exit both are restored, so
    a caller's own random streams are not changed by calling sctorch.
    """
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


# ----------------------------------------------------------------------------- device
def resolve_device(device: str | None = None):
    """Pick a torch device: the one asked for, else CUDA, then MPS, then CPU.

    Nothing touches CUDA until this is called. Under ``torchrun`` (``WORLD_SIZE`` > 1),
    ``None`` picks ``cuda:LOCAL_RANK``.

    Raises
    ------
    ValueError
        If a CUDA/MPS device is requested but not available.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            # under torchrun each process takes the GPU of its local rank
            local = (
                os.environ.get("LOCAL_RANK") if os.environ.get("WORLD_SIZE", "1") != "1" else None
            )
            return torch.device(f"cuda:{int(local)}" if local is not None else "cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available; "
            "pass device='cpu' or device=None."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={device!r} was requested but MPS is not available; "
            "pass device='cpu' or device=None."
        )
    return dev


# ----------------------------------------------------------------------------- input access
def get_matrix(adata: ad.AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]`` (not copied).

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming a layer that holds the data.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers (available: "
            f"{list(adata.layers.keys())}). Pass layer=None to use adata.X."
        )
    return adata.layers[layer]


def is_backed(X) -> bool:
    """Whether ``X`` is an on-disk matrix of a backed AnnData (h5py / anndata dataset)."""
    return X is not None and not (isinstance(X, np.ndarray) or sparse.issparse(X))


def read_rows(X, rows) -> np.ndarray | sparse.spmatrix:
    """Rows ``rows`` (a slice or sorted indices) of ``X`` as an in-memory dense or sparse block.

    Works alike for in-memory matrices and the on-disk ``X`` of an AnnData opened with
    ``anndata.read_h5ad(path, backed="r")``: only those rows are read.
    """
    if is_backed(X) and not isinstance(rows, slice):
        rows = np.asarray(rows)
        if rows.size and (np.diff(rows) <= 0).any():  # h5py needs increasing indices
            order = np.argsort(rows, kind="stable")
            block = X[rows[order]]
            return block[np.argsort(order)]
    return X[rows]


def iter_row_blocks(X, batch_size: int = 8192) -> Iterator[tuple[slice, object]]:
    """Yield ``(rows, block)`` over consecutive row blocks of ``X`` (in memory or backed)."""
    for sl in iter_batches(X.shape[0], batch_size):
        yield sl, read_rows(X, sl)


def _data_values(X) -> np.ndarray:
    """The stored values of a dense or sparse in-memory matrix (no densification)."""
    if sparse.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def _value_blocks(X) -> Iterator[np.ndarray]:
    """The stored values of ``X``: one array in memory, block by block for a backed matrix."""
    if is_backed(X):
        for _, block in iter_row_blocks(X):
            yield _data_values(block)
    else:
        yield _data_values(X)


def describe_source(layer: str | None) -> str:
    """``'adata.X'`` or ``"adata.layers['name']"``, for error messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


#: the one integer tolerance, in units of the value's float precision (see non_integer)
INTEGER_ULPS = 4


def non_integer(v: np.ndarray) -> np.ndarray:
    """Which values of ``v`` are not integers, within the one tolerance of every counts check.

    ``|x - round(x)| > 4 · eps(dtype) · max(1, |x|)``: a few units in the last place of the
    value's own float type, so integer counts stored as float32 (or float16) that a round
    trip through another tool left one step off still count as integers, while float64
    values are held to float64 precision. Integer and boolean arrays are integers.
    """
    v = np.asarray(v)
    if v.dtype.kind in "biu":
        return np.zeros(v.shape, dtype=bool)
    if v.dtype.kind != "f":
        v = v.astype(np.float64)
    eps = np.finfo(v.dtype).eps
    with np.errstate(invalid="ignore"):
        return np.abs(v - np.round(v)) > INTEGER_ULPS * eps * np.maximum(1, np.abs(v))


@dataclass
class _Scan:
    """What one pass over the stored values of a matrix found (see :func:`_scan`)."""

    n_nonfinite: int = 0
    n_negative: int = 0
    n_fractional: int = 0
    example: float | None = None  # a non-integer value
    example_dtype: str = ""
    vmax: float = 0.0

    @property
    def integer(self) -> bool:
        """Every stored value a non-negative integer (raw counts)."""
        return self.n_negative == 0 and self.n_fractional == 0


def _scan(X) -> _Scan:
    """One pass over ``X`` (block by block when backed): the facts every input check needs."""
    s = _Scan()
    for v in _value_blocks(X):
        if not v.size:
            continue
        finite = np.isfinite(v)
        if not finite.all():
            s.n_nonfinite += int((~finite).sum())
            v = v[finite]
            if not v.size:
                continue
        s.n_negative += int((v < 0).sum())
        frac = non_integer(v)
        if frac.any():
            s.n_fractional += int(frac.sum())
            if s.example is None:
                s.example = float(v[frac][0])
                s.example_dtype = str(v.dtype)
        s.vmax = max(s.vmax, float(v.max()))
    return s


def _raise_nonfinite(s: _Scan, what: str) -> None:
    if s.n_nonfinite:
        raise ValueError(
            f"{what} contains {s.n_nonfinite} non-finite value(s) (NaN or inf). "
            "Remove or impute them before calling this function."
        )


def _raise_not_counts(s: _Scan, what: str) -> None:
    _raise_nonfinite(s, what)
    if s.n_negative:
        raise ValueError(
            f"{what} contains {s.n_negative} negative value(s), but raw "
            "counts were expected. Pass the layer that holds the raw counts."
        )
    if s.n_fractional:
        raise ValueError(
            f"{what} contains {s.n_fractional} non-integer value(s) (e.g. "
            f"{s.example!r}, {abs(s.example - round(s.example)):.2g} from an integer; "
            f"more than {INTEGER_ULPS} {s.example_dtype} steps), but raw counts were "
            "expected. It looks log-normalised "
            "or scaled; pass the layer that holds the raw integer counts (e.g. "
            "layer='counts'), or, if they are in adata.raw, adata.raw.to_adata() (or "
            "copy them into a layer: adata.layers['counts'] = adata.raw[:, "
            "adata.var_names].X)."
        )


def check_finite(X, *, what: str = "adata.X") -> None:
    """Raise ``ValueError`` if ``X`` holds NaN or infinite values."""
    n_bad = sum(int((~np.isfinite(v)).sum()) for v in _value_blocks(X))
    _raise_nonfinite(_Scan(n_nonfinite=n_bad), what)


def check_counts(X, *, what: str = "adata.X") -> None:
    """Check that ``X`` holds raw counts: finite, non-negative integers (one pass over ``X``).

    Raises
    ------
    ValueError
        Naming what was found (non-finite, negative or non-integer values) and what to pass.
    """
    _raise_not_counts(_scan(X), what)


def check_cell_totals(X, *, what: str = "adata.X") -> np.ndarray:
    """Return the per-cell totals of ``X``; raise ``ValueError`` if a cell has none."""
    lib = row_sums(X)
    if (lib <= 0).any():
        raise ValueError(
            f"{int((lib <= 0).sum())} cell(s) have zero total counts in {what}; "
            "remove them first (e.g. scanpy.pp.filter_cells(adata, min_counts=1))."
        )
    return lib


def check_copy(adata: ad.AnnData, copy: bool) -> None:
    """Refuse ``copy=True`` for a backed AnnData before any work: anndata cannot copy it.

    Raises
    ------
    ValueError
        If ``copy`` and ``adata`` was opened with ``anndata.read_h5ad(path, backed="r")``.
    """
    if copy and getattr(adata, "isbacked", False):
        raise ValueError(
            "copy=True cannot copy an AnnData opened with backed='r' (anndata "
            "needs a file name to copy it). Pass copy=False to write the results "
            "into it (they are held in memory; write them with "
            "adata.write_h5ad(...)), or load it with adata.to_memory() first."
        )


def check_not_empty(adata: ad.AnnData, *, what: str = "adata") -> None:
    """Raise ``ValueError`` if ``adata`` has no cells or no genes (says which)."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        kind = "cells" if adata.n_obs == 0 else "genes"
        raise ValueError(
            f"{what} has 0 {kind} (shape {adata.n_obs} × {adata.n_vars}); pass an "
            "AnnData with at least one cell and one gene (check the filtering or "
            "subsetting that produced it)."
        )


def check_anndata(value, name: str, *, min_cells: int = 0, optional: bool = False) -> None:
    """Refuse a data argument that is not an AnnData (or has too few cells), naming it.

    Parameters
    ----------
    value
        The argument.
    name
        Its parameter name, for the message (e.g. ``"adata_ref"``).
    min_cells
        Fewest cells accepted (``0``: any).
    optional
        Accept ``None``.

    Raises
    ------
    TypeError
        If ``value`` is not an :class:`anndata.AnnData` (says what it is and how to wrap
        a DataFrame or array).
    ValueError
        If it has fewer than ``min_cells`` cells.
    """
    import anndata as ad

    if value is None and optional:
        return
    if not isinstance(value, ad.AnnData):
        kind = type(value).__name__
        hint = (
            "wrap it: anndata.AnnData(df) for a cells × genes DataFrame (var_names from "
            "its columns)"
            if hasattr(value, "columns")
            else "wrap a cells × genes matrix with anndata.AnnData(X, var=...) naming the genes"
        )
        raise TypeError(f"{name} must be an AnnData (cells × genes), got {kind}; {hint}.")
    if value.n_obs < min_cells:
        raise ValueError(
            f"{name} has {value.n_obs} cells (shape {value.n_obs} × {value.n_vars}); at "
            f"least {min_cells} needed. Check the filtering or subsetting that produced it."
        )


def check_model(model, expected: str, *, name: str = "model", hint: str = "") -> None:
    """Refuse a model argument that is not an instance of the model class ``expected``.

    Checked by class name (``_utils`` imports no method code).

    Raises
    ------
    TypeError
        Naming the argument, what it got and (``hint``) how to get a model.
    """
    if not any(k.__name__ == expected for k in type(model).__mro__):
        more = f"; {hint}" if hint else ""
        raise TypeError(
            f"{name} must be a {expected}, got {type(model).__name__} {model!r:.40}{more}."
        )


def clamp_setting(name: str, value, limit, *, why: str, stacklevel: int = 3):
    """``min(value, limit)``, warning when the given setting has to be lowered.

    The one way a function changes a setting it was given: the caller records the value
    used (e.g. ``<name>_fitted`` in ``uns[...]['params']``) beside the value given.

    Warns
    -----
    UserWarning
        ``"<name>=<value> ... uses <limit>"`` with ``why``, when ``value > limit``.
    """
    if value is None or value <= limit:
        return value
    warnings.warn(
        f"{name}={value} is more than this data allows; uses {limit} instead ({why}). The "
        "value used is recorded beside the one given.",
        UserWarning,
        stacklevel=stacklevel,
    )
    return limit


def warn_small_classes(labels, *, what: str, min_cells: int = 2) -> None:
    """Warn when a class of reference labels has fewer than ``min_cells`` cells.

    Such a class is learned from one example and cannot be held out for validation.

    Warns
    -----
    UserWarning
        Naming the classes (at most 5) and their sizes.
    """
    import pandas as pd

    counts = pd.Series(np.asarray(labels)).value_counts()
    small = counts[counts < min_cells]
    if len(small):
        listed = ", ".join(f"{k!r}: {int(v)}" for k, v in small.head(5).items())
        warnings.warn(
            f"{what} has {len(small)} class(es) with fewer than {min_cells} cells ({listed}); "
            "such a class is learned from a single example and cannot be held out for "
            "validation. Merge it with a related class or drop its cells if that is not "
            "meant.",
            UserWarning,
            stacklevel=3,
        )


def check_positive(**kwargs) -> None:
    """Raise ``ValueError`` for an argument (``None`` skipped) that is not a finite number > 0."""
    for name, val in kwargs.items():
        if val is None:
            continue
        ok = isinstance(val, int | float | np.number) and not isinstance(val, bool)
        if not (ok and np.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a positive number, got {val!r}.")


def available_memory() -> int | None:
    """Bytes of memory the system can give now (``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(nbytes: float, *, what: str, advice: str) -> None:
    """Refuse, before allocating, work whose estimated memory exceeds what is available.

    Raises
    ------
    MemoryError
        If ``nbytes`` is larger than :func:`available_memory`; the message gives both sizes,
        ``what`` needs the memory and ``advice`` says what to do instead.
    """
    free = available_memory()
    if free is not None and nbytes > free:
        raise MemoryError(
            f"{what} needs about {nbytes / 2**30:.1f} GiB of memory, more than the "
            f"{free / 2**30:.1f} GiB available; {advice}"
        )


def check_unique_var_names(adata: ad.AnnData) -> None:
    """Raise ``ValueError`` if ``adata.var_names`` has duplicates."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"adata.var_names has {int(adata.var_names.duplicated().sum())} duplicate "
            f"name(s), e.g. {dup}. Call adata.var_names_make_unique() first."
        )


def check_non_negative(X, *, what: str = "adata.X") -> None:
    """Raise ``ValueError`` if ``X`` holds negative values (e.g. scaled data)."""
    if any(bool((v < 0).any()) for v in _value_blocks(X) if v.size):
        raise ValueError(
            f"{what} contains negative values; expected counts or log-normalised "
            "expression (not scaled/centred data)."
        )


def is_integer_matrix(X) -> bool:
    """Whether every stored value of ``X`` is a (non-negative, finite) integer: raw counts."""
    s = _scan(X)
    return s.integer and not s.n_nonfinite


InputScale = Literal["auto", "counts", "log1p"]
_LOG1P_MAX = 30.0  # log1p-normalised expression stays far below this (log1p(1e6) ≈ 13.8)


def resolve_input_scale(X, input_scale: str = "auto", *, what: str = "adata.X") -> str:
    """The one rule for "raw counts or log-normalised": validate ``X``, return its scale.

    ``"counts"``: finite, non-negative integers (:func:`check_counts`). ``"log1p"``:
    finite, non-negative, not integer counts and at most 30 (log-normalised values;
    ``log1p(10⁶)`` ≈ 13.8). ``"auto"``: ``"counts"`` when every stored value is a
    non-negative integer, else ``"log1p"`` (finite, non-negative; continuous values such
    as imaging intensities are not capped, since they are used as given).

    Returns
    -------
    ``"counts"`` or ``"log1p"``.

    Raises
    ------
    ValueError
        If ``input_scale`` is unknown, or ``X`` does not hold what it declares (says what
        was found and which ``input_scale`` or layer to pass instead).
    """
    if input_scale not in ("auto", "counts", "log1p"):
        raise ValueError(f"input_scale must be 'auto', 'counts' or 'log1p', got {input_scale!r}.")
    s = _scan(X)  # one pass over X for every check below
    if input_scale == "counts":
        _raise_not_counts(s, what)
        return "counts"
    _raise_nonfinite(s, what)
    if s.n_negative:
        raise ValueError(
            f"{what} contains negative values; expected counts or log-normalised "
            "expression (not scaled/centred data)."
        )
    if input_scale == "auto" and s.integer:
        return "counts"
    if s.vmax > 1 and s.integer:
        raise ValueError(
            f"{what} holds integer values up to {s.vmax:.0f}: raw counts, but "
            "input_scale='log1p' was given. Pass input_scale='counts' (or 'auto'),"
            " or the layer that holds log-normalised values."
        )
    if input_scale == "log1p" and s.vmax > _LOG1P_MAX:
        raise ValueError(
            f"{what} holds values up to {s.vmax:.4g}, but log1p-normalised "
            f"expression stays below {_LOG1P_MAX:g}. Pass raw counts (input_scale="
            "'counts') or log1p(normalised) values (scanpy.pp.normalize_total, "
            "then scanpy.pp.log1p)."
        )
    return "log1p"


def row_sums(X) -> np.ndarray:
    """Sum of every row as a 1-D float64 array (dense, sparse or backed, read by blocks)."""
    if is_backed(X):
        return (
            np.concatenate([row_sums(block) for _, block in iter_row_blocks(X)])
            if X.shape[0]
            else np.zeros(0)
        )
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def to_dense(X, dtype=np.float32) -> np.ndarray:
    """Dense ``ndarray`` copy of a (small) dense or sparse block."""
    if sparse.issparse(X):
        return X.toarray().astype(dtype, copy=False)
    return np.asarray(X, dtype=dtype)


def iter_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Yield consecutive slices of ``range(n)`` of at most ``batch_size`` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def log_normalize(X, target_sum: float | None = 1e4):
    """``log1p(X / library × target_sum)`` of a counts block; sparse stays sparse.

    ``target_sum=None`` scales to the median library size of the non-empty cells.
    Uses :func:`scanpy.pp.normalize_total` and :func:`scanpy.pp.log1p` on a throw-away AnnData.
    """
    import anndata as ad
    import scanpy as sc

    if target_sum is None:  # explicit median: Scanpy's differs between sparse and dense input
        lib = row_sums(X)
        target_sum = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
    tmp = ad.AnnData(X.astype(np.float32))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return tmp.X


# ----------------------------------------------------------------------------- records
def package_versions() -> dict[str, str]:
    """Versions of sctorch and the main libraries, for ``uns[...]['params']``."""
    out = {}
    for name in ("sctorch", "torch", "numpy", "scanpy", "anndata", "pot", "torch-geometric"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def make_params(**kwargs: Any) -> dict[str, Any]:
    """A ``params`` record: the arguments given, package versions and ``world_size``.

    ``world_size`` is the number of torchrun processes (1 without torchrun). Values are
    made h5ad-writable.
    """
    params = {}
    for k, v in kwargs.items():
        if isinstance(v, np.random.Generator):
            v = "numpy.random.Generator"
        elif v is None:
            v = "None"
        elif isinstance(v, tuple | list):
            v = np.asarray(v)
        elif not isinstance(v, str | int | float | bool | np.ndarray | np.generic | dict):
            v = str(v)
        params[k] = v
    params["versions"] = package_versions()
    params.setdefault("world_size", int(os.environ.get("WORLD_SIZE", "1") or 1))
    return params


# ----------------------------------------------------------------------------- bounded work
#: a training run estimated to take longer than this warns once (seconds; one day)
LONG_RUN_SECONDS = 24 * 3600.0


def estimate_run(*, epochs: int, seconds_per_epoch: float, done: int = 0) -> float:
    """Estimated seconds left for ``epochs - done`` epochs at ``seconds_per_epoch`` each.

    The one estimator of how long a job runs: :func:`sctorch.models.fit` calls it (through
    :class:`RunLength`) with the time of the first epoch.
    """
    return max(int(epochs) - int(done), 0) * float(seconds_per_epoch)


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


class RunLength:
    """Warn once when a training run is estimated to take absurdly long.

    Create it before the first epoch and call :meth:`tick` after each one; after the first
    epoch it estimates the rest (:func:`estimate_run`) and, above
    :data:`LONG_RUN_SECONDS`, issues one :class:`UserWarning` with the estimate, saying
    whether the run may stop earlier (``stops_early``: early stopping is on).
    """

    def __init__(self, what: str, epochs: int, *, stops_early: bool = False):
        import time

        self.what, self.epochs, self.stops_early = what, int(epochs), stops_early
        self._t0 = time.perf_counter()
        self._done = False

    def tick(self, epoch: int) -> None:
        """Call after epoch ``epoch`` (0-based); only the first call estimates."""
        import time
        import warnings

        if self._done:
            return
        self._done = True
        per_epoch = (time.perf_counter() - self._t0) / (epoch + 1)
        left = estimate_run(epochs=self.epochs, seconds_per_epoch=per_epoch, done=epoch + 1)
        if left > LONG_RUN_SECONDS:
            early = (
                " (early stopping is on, so it may stop earlier)"
                if self.stops_early
                else " (nothing stops it earlier)"
            )
            warnings.warn(
                f"{self.what}: {self.epochs:,} epochs at {per_epoch:.3g} s per epoch: "
                f"estimated {_duration(left)} to finish{early}. Pass fewer epochs (or a "
                "patience= to stop early) unless this is meant; interrupt with Ctrl-C.",
                UserWarning,
                stacklevel=4,
            )


# ----------------------------------------------------------------------------- progress
def progress_bar(
    iterable=None,
    *,
    total: int | None = None,
    desc: str | None = None,
    progress: bool = True,
    **kwargs,
):
    """A ``tqdm.auto`` progress bar that is silent when ``progress`` is False."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, leave=False, **kwargs)
