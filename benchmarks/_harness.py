"""What every benchmark script shares: timing, peak memory, normalisation, the results file.

The scripts import this module (``import _harness``; the scripts' own folder is on
``sys.path`` when they run as ``python benchmarks/X.py``). Like the tutorials, the
benchmarks use only sctorch's public API; the few helpers below re-express, with Scanpy
and NumPy, what a public sctorch function documents it does, so that a script can apply
the same transform to a peer's input.

- memory: :func:`peak_rss_mib` (``ru_maxrss``: the process's peak resident memory so
  far; it only grows, so a method measured alone runs in its own process),
  :func:`current_rss_mib` and :class:`RssSampler` (highest RSS while a block runs),
  :func:`measured` (seconds and ``tracemalloc`` peak of one call);
- normalisation: :func:`log_normalize`, :func:`stimpute_normalise`, :func:`grid_shape`;
- results: :func:`header` (title, command, date, machine) and :func:`write_results`.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


# ------------------------------------------------------------------------ time, memory
def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``; KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (``VmHWM``) to its current RSS (Linux).

    Writes 5 to ``/proc/self/clear_refs``; :func:`hwm_rss_mib` then reports the peak
    since this call. Returns False where the kernel does not allow it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def hwm_rss_mib() -> float:
    """Peak resident memory (``VmHWM``) since the last :func:`reset_peak_rss`, MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def current_rss_mib() -> float:
    """Current resident memory of this process (``VmRSS``), MiB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class RssSampler:
    """Highest current RSS seen while the ``with`` block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak = current_rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, current_rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_mib())


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, tracemalloc peak MiB)`` of one call.

    ``tracemalloc`` counts Python and NumPy allocations; torch CPU tensors only partly,
    so scripts that use it report the process peak RSS (:func:`peak_rss_mib`) too.
    """
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        sec = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return out, sec, peak


# ------------------------------------------------------------------------ normalisation
def log_normalize(X, target_sum: float = 1e4):
    """``log1p`` of counts scaled to ``target_sum`` per cell; sparse stays sparse.

    The log-normalisation sctorch's functions document (``scanpy.pp.normalize_total``
    then ``scanpy.pp.log1p``, on a float32 copy), done here with Scanpy itself.
    """
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X.astype(np.float32))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    return tmp.X


def is_counts(X) -> bool:
    """All values non-negative integers (within 1e-6): raw counts."""
    from scipy import sparse

    vals = np.asarray(X.data) if sparse.issparse(X) else np.asarray(X)
    if vals.size == 0:
        return True
    return bool((vals >= 0).all() and np.allclose(vals, np.round(vals), atol=1e-6, rtol=0))


def stimpute_normalise(adata) -> np.ndarray:
    """``adata.X`` on the scale ``sct.tl.stimpute`` works on, as a dense array.

    As documented by ``sct.tl.stimpute``: raw counts (all values non-negative integers)
    are divided by the cell total, scaled by the median total of the cells with counts,
    and log1p-transformed; any other input is used as given.
    """
    X = adata.X
    if is_counts(X):
        lib = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        target = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
        X = log_normalize(X, target_sum=target)
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def grid_shape(n_genes: int) -> tuple[int, int]:
    """The GenoMap grid ``(H, W)`` that ``sct.tl.genomap`` picks for ``n_genes`` genes.

    ``W = ceil(sqrt(n))``, ``H = ceil(n / W)`` (1,024 → 32 × 32, 2,025 → 45 × 45): the
    smallest near-square grid, as the ``shape`` parameter of ``sct.tl.genomap`` documents.
    After ``sct.tl.genomap`` the same value is in ``adata.uns['genomap']['shape']``; this
    copy is for peers that need the grid before (or without) running it.
    """
    w = int(np.ceil(np.sqrt(n_genes)))
    return int(np.ceil(n_genes / w)), w


# ------------------------------------------------------------------------ data
def dataset(name: str):
    """One of the real data sets the benchmarks use, by short name (raw counts)."""
    import sctorch as sct

    loaders = {
        "ifnb": sct.datasets.ifnb_pbmc,
        "pbmc3k": sct.datasets.pbmc3k,
        "zeisel": sct.datasets.zeisel2015,
    }
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(loaders)}")
    return loaders[name]()


# ------------------------------------------------------------------------ results file
def command(script: str | Path | None = None, args: Sequence[str] | None = None) -> str:
    """``python benchmarks/NAME.py ARGS`` (``args`` default: this process's arguments)."""
    name = Path(script or sys.argv[0]).name
    args = sys.argv[1:] if args is None else list(args)
    return shlex.join(["python", f"benchmarks/{name}", *args])


def machine() -> str:
    """Processor, visible CPU cores and OS of this machine, in words."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}"
    )


def header(
    title: str,
    *,
    script: str | Path | None = None,
    args: Sequence[str] | None = None,
    note: str = "",
) -> list[str]:
    """The first lines of every results page: title, command, date and machine.

    ``note`` is appended to the command sentence (e.g. settings or thread counts).
    """
    line = f"Command: `{command(script, args)}`; {time.strftime('%Y-%m-%d')}, {machine()}." + (
        f" {note}" if note else ""
    )
    return [f"# {title}", "", line, ""]


def write_results(
    path: str | Path,
    title: str,
    body: Sequence[str],
    *,
    script: str | Path | None = None,
    args: Sequence[str] | None = None,
    note: str = "",
    echo: bool = True,
) -> Path:
    """Write :func:`header` + ``body`` (Markdown lines) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([*header(title, script=script, args=args, note=note), *body]).rstrip()
    path.write_text(text + "\n", encoding="utf-8")
    if echo:
        print(text)
    return path


def kept_reading(path: str | Path) -> list[str]:
    """The hand-written ``## Reading`` section of a results file (its lines; ``[]`` if none).

    Renderers put it back at the end, so re-rendering a table keeps the text about it.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    return old[old.index("\n## Reading") :].strip().splitlines() if "\n## Reading" in old else []


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table: a header row, the separator and one line per row (str() cells)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def random_placement(a, key: str, seed: int = 0) -> None:
    """The paper's ablation: the genes of ``a``'s GenoMap on the same grid in a random order.

    Written as a second placement under ``key`` (``var[key + "_row" / "_col"]``,
    ``uns[key]``); the GenoMap ``"genomap"`` must exist.
    """
    H, W = a.uns["genomap"]["shape"]
    pix = np.random.default_rng(seed).permutation(H * W)[: a.n_vars]
    a.var[f"{key}_row"] = pix // W
    a.var[f"{key}_col"] = pix % W
    a.uns[key] = {"shape": (H, W), "objective": float("nan")}
