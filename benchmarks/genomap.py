"""GenoMap construction: sctorch vs the authors' ``genomap`` package vs a naive layout.

Run ``python benchmarks/genomap.py`` (``--quick``: 1,024 intestine genes only). Writes
``benchmarks/results/genomap.md`` and ``benchmarks/results/genomap_intestine_zones.png``.

Every data set is log-normalised once (``scanpy.pp.normalize_total`` to 10⁴ per cell,
then ``scanpy.pp.log1p``: ``_harness.log_normalize``), restricted to its ``n`` most
variable genes (``scanpy.pp.highly_variable_genes``) and written to a temporary
``.npy``; each method then runs in its own subprocess with 2 BLAS/FFT threads on exactly
that matrix, so seconds and peak RSS (``ru_maxrss``) are comparable. The three quality
figures of every placement come from :func:`sctorch.tl.genomap_quality` on the same
matrix.

Methods
- ``sctorch``: ``sct.tl.genomap`` with its defaults.
- ``genomap`` (PyPI, the authors' package; ``pip install --no-deps genomap``):
  ``construct_genomap_returnT(data, H, W, epsilon=0, num_iter=PEER_ITER)`` — the
  function behind ``construct_genomap`` that also returns the coupling ``T``; the
  placement is the argmax of ``T`` per gene (collisions are counted).
- ``naive``: genes sorted into rows by the first, and within rows by the second,
  principal axis of their correlation matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _harness import (
    RssSampler,
    current_rss_mib,
    grid_shape,
    log_normalize,
    peak_rss_mib,
    write_results,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PEER_ITER = 100  # the peer's default is 1,000; capped here to keep the run under an hour
THREADS = "2"


# ----------------------------------------------------------------------------- children
def _naive(X: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    R = np.corrcoef(X.T.astype(np.float64))
    _, vec = np.linalg.eigh(R)
    n = X.shape[1]
    w = shape[1]
    rows, cols = np.empty(n, np.int64), np.empty(n, np.int64)
    order = np.argsort(vec[:, -1], kind="stable")
    for r, start in enumerate(range(0, n, w)):
        idx = order[start : start + w]
        idx = idx[np.argsort(vec[idx, -2], kind="stable")]
        rows[idx] = r
        cols[idx] = np.arange(idx.size)
    return rows, cols


def child(method: str, path: str, out: str) -> None:
    X = np.load(path)
    n = X.shape[1]
    import anndata as ad  # noqa: F401  (imported before the clock starts)

    import sctorch as sct  # noqa: F401

    h, w = grid_shape(n)
    info: dict = {}
    rss0 = current_rss_mib()
    with RssSampler() as sampler:
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        rows, cols = _place(method, X, (h, w), info)
        sec = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    # the grid every method uses is the one sct.tl.genomap picks (its uns shape)
    if "shape" in info and tuple(info.pop("shape")) != (h, w):
        raise RuntimeError(f"sct.tl.genomap chose another grid than {(h, w)} for {n} genes.")
    Path(out).write_text(
        json.dumps(
            {
                "seconds": sec,
                "cpu_seconds": cpu,
                "rss_before_mb": rss0,
                "rss_during_mb": sampler.peak,
                "rss_peak_mb": peak_rss_mib(),
                "rows": np.asarray(rows).tolist(),
                "cols": np.asarray(cols).tolist(),
                **info,
            }
        )
    )


def _place(method: str, X: np.ndarray, shape: tuple[int, int], info: dict):
    import anndata as ad

    import sctorch as sct

    n = X.shape[1]
    h, w = shape
    if method == "sctorch":
        a = ad.AnnData(X)
        sct.tl.genomap(a, progress=False)
        rows, cols = a.var["genomap_row"].to_numpy(), a.var["genomap_col"].to_numpy()
        info["n_iter"] = a.uns["genomap"]["n_iter"]
        info["shape"] = [int(v) for v in a.uns["genomap"]["shape"]]
    elif method == "genomap":
        # this script is also called genomap.py: import the package, not ourselves
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        import genomap as peer
        import ot

        calls = {"n": 0}
        emd = ot.lp.emd

        def counted(*args, **kwargs):
            calls["n"] += 1
            return emd(*args, **kwargs)

        ot.lp.emd = counted
        _, T = peer.construct_genomap_returnT(
            X.astype(np.float64), h, w, epsilon=0, num_iter=PEER_ITER
        )
        k = np.asarray(T).argmax(1)
        # the peer's pixel k is (k mod H, k div H): its images are reshaped in F order
        rows, cols = k % h, k // h
        info["n_iter"] = calls["n"]
        info["collisions"] = int(n - np.unique(k).size)
    elif method == "naive":
        rows, cols = _naive(X, (h, w))
    else:
        raise ValueError(method)
    return rows, cols


# ----------------------------------------------------------------------------- parent
def _prepare(name: str, n: int, tmp: Path):
    import scanpy as sc

    import sctorch as sct

    a = sct.datasets.intestine_moor2018() if name == "intestine" else sct.datasets.pbmc3k()
    sc.pp.filter_genes(a, min_cells=3)
    a.X = log_normalize(a.X)
    sc.pp.highly_variable_genes(a, n_top_genes=n)
    a = a[:, a.var["highly_variable"].to_numpy()].copy()
    X = a.X.toarray().astype(np.float32)
    path = tmp / f"{name}_{n}.npy"
    np.save(path, X)
    return a, path


def _run(method: str, path: Path, tmp: Path) -> dict:
    out = tmp / f"{path.stem}_{method}.json"
    env = dict(
        os.environ, OMP_NUM_THREADS=THREADS, OPENBLAS_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS
    )
    subprocess.run(
        [sys.executable, __file__, "--child", method, str(path), str(out)], check=True, env=env
    )
    return json.loads(out.read_text())


def _quality(a, res: dict) -> dict:
    import sctorch as sct

    b = a.copy()
    rows, cols = np.asarray(res["rows"]), np.asarray(res["cols"])
    h, w = grid_shape(b.n_vars)
    flat = rows * w + cols
    if np.unique(flat).size < flat.size:  # argmax collisions: keep the first gene per pixel
        _, first = np.unique(flat, return_index=True)
        keep = np.zeros(flat.size, bool)
        keep[first] = True
        rows, cols = np.where(keep, rows, -1), np.where(keep, cols, -1)
    b.var["q_row"], b.var["q_col"] = rows, cols
    b.uns["q"] = {"shape": (h, w), "params": {"metric": "correlation"}}
    return sct.tl.genomap_quality(b, key="q")


def main(quick: bool = False) -> None:
    RESULTS.mkdir(exist_ok=True)
    cases = [("intestine", 1024, True)]
    if not quick:
        cases += [("intestine", 2025, True), ("pbmc3k", 2025, True), ("intestine", 5000, False)]
    lines = [
        f"Every method in its own subprocess with {THREADS} BLAS/FFT threads "
        f"(`OMP_NUM_THREADS={THREADS}`) on this machine ({os.cpu_count()} CPU cores visible, "
        "shared with other jobs, so wall seconds vary with their load; CPU s = user + system "
        "time of the method, all threads). Input: log-normalised expression of the "
        "n most variable genes. Peer: `genomap` (PyPI) `construct_genomap_returnT`, "
        f"`epsilon=0`, `num_iter={PEER_ITER}` (its default is 1,000), placement = argmax "
        "of T per gene. Peak = whole-process peak RSS (`ru_maxrss`, includes Python, "
        "Scanpy/AnnData imports and the data); (+x) = highest RSS sampled every 5 ms while "
        "the method ran minus the RSS just before it.",
        "",
        "Quality (`sct.tl.genomap_quality`): GW = square-loss GW objective with both "
        "distances scaled to [0, 1] (lower better); coherence = mean Pearson correlation "
        "between a gene and its 4 grid neighbours minus the same for a random placement "
        "(higher better); Spearman between interaction distance and 2-D grid distance.",
        "",
        "| data | genes | grid | method | wall s | CPU s | peak RSS MB (+during) | iterations | "
        "GW obj | "
        "coherence | Spearman |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    picture_done = False
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for name, n, with_peer in cases:
            a, path = _prepare(name, n, tmp)
            h, w = grid_shape(n)
            methods = ["sctorch", "naive"] + (["genomap"] if with_peer else [])
            res = {}
            for m in methods:
                print(f"[genomap bench] {name} {n} {m} ...", flush=True)
                res[m] = _run(m, path, tmp)
                q = _quality(a, res[m])
                r = res[m]
                it = str(r.get("n_iter", "–"))
                if r.get("collisions"):
                    it += f" ({r['collisions']} collisions)"
                lines.append(
                    f"| {name} | {n} | {h}×{w} | {m} | {r['seconds']:.1f} | "
                    f"{r['cpu_seconds']:.1f} | "
                    f"{r['rss_peak_mb']:.0f} (+{r['rss_during_mb'] - r['rss_before_mb']:.0f}) | "
                    f"{it} | {q['gw_objective']:.4f} | {q['neighbor_coherence']:.4f} | "
                    f"{q['spearman']:.3f} |"
                )
                print(lines[-1], flush=True)
            if with_peer:
                ratio = res["genomap"]["seconds"] / res["sctorch"]["seconds"]
                cratio = res["genomap"]["cpu_seconds"] / res["sctorch"]["cpu_seconds"]
                lines.append(
                    f"| {name} | {n} | | **speed-up vs peer** | **{ratio:.1f}×** | "
                    f"**{cratio:.1f}×** | | | | | |"
                )
            if name == "intestine" and not picture_done:
                _picture(a, res["sctorch"])
                picture_done = True
    lines += [
        "",
        "Picture: `genomap_intestine_zones.png` — `sct.pl.genomap` of the "
        "intestine (1,024 genes, log-normalised), 8 random cells per crypt–villus zone.",
    ]
    write_results(RESULTS / "genomap.md", "GenoMap construction benchmark", lines, script=__file__)


def _picture(a, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import sctorch as sct

    b = a.copy()
    b.var["genomap_row"], b.var["genomap_col"] = res["rows"], res["cols"]
    b.uns["genomap"] = {"shape": grid_shape(b.n_vars)}
    sct.pl.genomap(
        b,
        groupby="zone",
        n_per_group=8,
        rng=0,
        show=False,
        save=RESULTS / "genomap_intestine_zones.png",
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "NPY", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
    else:
        main(quick=args.quick)
