"""Scaling out: torchrun data parallelism on this machine, and backed (on-disk) input.

1. Seconds per training epoch of TCER and scRobust pre-training in 1 process and in 2
   processes under ``torchrun --nproc_per_node 2`` (gloo on CPU, one thread each). On a
   2-core CPU this shows the overhead of the gradient all-reduce, not a speed-up: each
   process still runs on one core.
2. Peak memory of ``sct.tl.scrobust_embed`` on a backed AnnData of N cells
   (``anndata.read_h5ad(path, backed="r")``) against the size of its ``X`` in memory, and
   against the same call on the in-memory AnnData.
3. Peak memory and seconds of one epoch of ``sct.tl.scrobust_pretrain`` (defaults,
   d_model 32) from the same backed file (each mini-batch read from disk) and from memory.

Usage::

    python benchmarks/scaling.py                       # both parts, N = 100,000
    python benchmarks/scaling.py --skip-backed         # part 1 only
    python benchmarks/scaling.py --skip-ddp --cells 200000
    python benchmarks/scaling.py --skip-ddp --skip-backed   # part 3 only

Writes ``benchmarks/results/scaling.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.md"


# ----------------------------------------------------------------------------- part 1
def _train_child(method: str, out: str) -> None:
    """One training run (under torchrun: one rank); rank 0 writes seconds per epoch."""
    import torch

    import sctorch as sct
    from sctorch.models._distributed import is_main_process, world_size

    torch.set_num_threads(1)
    if method == "tcer":
        a = sct.datasets.intestine_moor2018(bundled=True)
        a = a[:, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:400]].copy()
        a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
        sct.tl.genomap(a, rng=0, progress=False)
        t = time.perf_counter()
        m = sct.tl.tcer_impute(
            a,
            n_features=8,
            epochs=3,
            patience=None,
            validation_fraction=0.0,
            rng=0,
            progress=False,
            return_model=True,
        )
        epochs = len(m.history["train_loss"])
    else:
        a = sct.datasets.ifnb_pbmc(bundled=True)
        t = time.perf_counter()
        m = sct.tl.scrobust_pretrain(a, d_model=64, n_heads=4, epochs=2, rng=0, progress=False)
        epochs = len(m.history["pretrain_loss"])
    sec = time.perf_counter() - t
    if is_main_process():
        Path(out).write_text(
            json.dumps(
                {
                    "seconds_per_epoch": sec / epochs,
                    "world_size": world_size(),
                    "cells": a.n_obs,
                    "genes": a.n_vars,
                }
            )
        )


def ddp_rows(tmp: Path) -> list[list]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    for method in ("tcer", "scrobust"):
        res = {}
        for n in (1, 2):
            out = tmp / f"{method}{n}.json"
            launch = (
                [sys.executable]
                if n == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    str(n),
                    "--master_addr",
                    "127.0.0.1",
                    "--master_port",
                    "29581",
                ]
            )
            subprocess.run(
                [*launch, __file__, "--child-train", method, str(out)], check=True, env=env
            )
            res[n] = json.loads(out.read_text())
        r1, r2 = res[1]["seconds_per_epoch"], res[2]["seconds_per_epoch"]
        rows.append(
            [
                method,
                f"{res[1]['cells']} × {res[1]['genes']}",
                f"{r1:.1f}",
                f"{r2:.1f}",
                f"{r2 / r1:.2f}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- part 2
def _source():
    """ifnb PBMC, all genes (data directory), else the bundled 2,000-gene subset."""
    import sctorch as sct

    try:
        return sct.datasets.ifnb_pbmc(), "ifnb PBMC (all 14,053 genes)"
    except FileNotFoundError:
        return sct.datasets.ifnb_pbmc(bundled=True), "bundled ifnb PBMC (2,000 genes)"


def _make_cells(path: Path, n_cells: int) -> dict:
    """N cells resampled (Poisson) from ifnb PBMC cells, CSR counts."""
    import anndata as ad
    from scipy import sparse

    src, _ = _source()
    X = src.X.tocsr()
    rng = np.random.default_rng(0)
    blocks = []
    for start in range(0, n_cells, 20_000):
        pick = rng.integers(0, src.n_obs, min(20_000, n_cells - start))
        B = X[pick].astype(np.float32)
        B.data = rng.poisson(B.data).astype(np.float32)
        B.eliminate_zeros()
        blocks.append(B)
    M = sparse.vstack(blocks).tocsr()
    lib = np.asarray(M.sum(axis=1)).ravel()
    empty = np.flatnonzero(lib == 0)
    if empty.size:  # no empty cell
        M = (
            M
            + sparse.csr_matrix(
                (np.ones(empty.size, np.float32), (empty, np.zeros(empty.size, int))), shape=M.shape
            )
        ).tocsr()
    a = ad.AnnData(M, var=src.var[[]])
    a.obs_names = [f"c{i}" for i in range(n_cells)]
    a.write_h5ad(path)
    return {
        "x_mib": (M.data.nbytes + M.indices.nbytes + M.indptr.nbytes) / 2**20,
        "nnz": int(M.nnz),
    }


def _embed_child(path: str, backed: str, out: str, model: str) -> None:
    import anndata as ad
    import torch

    import sctorch as sct

    torch.set_num_threads(1)
    m = sct.models.load(model, device="cpu")
    # warm-up on 64 cells: the first call pages in torch's kernels (a fixed ~250 MiB of
    # RSS that does not depend on the data), which is not what is measured here
    probe = ad.read_h5ad(path, backed="r")
    m.embed(probe[:64].to_memory(), n_genes=64, batch_size=512, progress=False)
    probe.file.close()
    start = _harness.current_rss_mib()
    with _harness.RssSampler() as rss:
        a = ad.read_h5ad(path, backed="r" if backed == "backed" else None)
        t = time.perf_counter()
        sct.tl.scrobust_embed(a, m, n_genes=64, batch_size=512, rng=0, progress=False)
        sec = time.perf_counter() - t
    Path(out).write_text(
        json.dumps(
            {
                "start_mib": start,
                "peak_mib": rss.peak,
                "seconds": sec,
                "shape": list(a.obsm["X_scrobust"].shape),
            }
        )
    )


def _pretrain_child(path: str, backed: str, out: str) -> None:
    import anndata as ad
    import torch

    import sctorch as sct

    torch.set_num_threads(1)
    kw = dict(d_model=32, n_heads=4, epochs=1, batch_size=256, rng=0, progress=False)
    probe = ad.read_h5ad(path, backed="r")  # warm-up: torch's kernels paged in
    sct.tl.scrobust_pretrain(probe[:256].to_memory(), **kw)
    probe.file.close()
    start = _harness.current_rss_mib()
    with _harness.RssSampler() as rss:
        a = ad.read_h5ad(path, backed="r" if backed == "backed" else None)
        t = time.perf_counter()
        sct.tl.scrobust_pretrain(a, **kw)
        sec = time.perf_counter() - t
    Path(out).write_text(json.dumps({"start_mib": start, "peak_mib": rss.peak, "seconds": sec}))


def memory_rows(tmp: Path, n_cells: int, child: str, *extra: str) -> tuple[list[list], dict]:
    """``child`` run in fresh processes: backed at N/5 and N cells, in memory at N.

    Returns the table rows and the backed growth per added cell (bytes) and fixed part
    (MiB), with the size of X per added cell (bytes).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows, res = [], {}
    for n, mode in ((n_cells // 5, "backed"), (n_cells, "backed"), (n_cells, "in_memory")):
        path = tmp / f"cells{n}.h5ad"
        if not path.exists():
            res[("x", n)] = _make_cells(path, n)
        out = tmp / f"{child.strip('-')}_{mode}_{n}.json"
        subprocess.run(
            [sys.executable, __file__, child, str(path), mode, str(out), *extra],
            check=True,
            env=env,
        )
        r = json.loads(out.read_text())
        res[(mode, n)] = grow = r["peak_mib"] - r["start_mib"]
        x = res[("x", n)]["x_mib"]
        rows.append(
            [
                mode.replace("_", " "),
                f"{n:,}",
                f"{x:.0f}",
                f"{grow:.0f}",
                f"{grow / x:.2f}",
                f"{r['seconds']:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    small, big = n_cells // 5, n_cells
    per_cell = (res[("backed", big)] - res[("backed", small)]) / (big - small) * 2**20
    x_cell = (res[("x", big)]["x_mib"] - res[("x", small)]["x_mib"]) / (big - small) * 2**20
    return rows, {
        **res[("x", big)],
        "per_cell": per_cell,
        "x_cell": x_cell,
        "fixed": res[("backed", small)] - per_cell * small / 2**20,
    }


def backed_rows(tmp: Path, n_cells: int) -> tuple[list[list], dict]:
    """Backed embedding at N/5 and N cells (growth per added cell) and in memory at N."""
    import sctorch as sct

    src, name = _source()
    model = tmp / "model.safetensors"
    sct.tl.scrobust_pretrain(src, d_model=32, n_heads=4, epochs=1, rng=0, progress=False).save(
        model
    )
    rows, info = memory_rows(tmp, n_cells, "--child-embed", str(model))
    return rows, {**info, "name": name}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--skip-backed", action="store_true")
    p.add_argument("--child-train", nargs=2, metavar=("METHOD", "OUT"))
    p.add_argument("--skip-pretrain", action="store_true")
    p.add_argument("--child-embed", nargs=4, metavar=("H5AD", "MODE", "OUT", "MODEL"))
    p.add_argument("--child-pretrain", nargs=3, metavar=("H5AD", "MODE", "OUT"))
    args = p.parse_args(argv)
    if args.child_pretrain:
        return _pretrain_child(*args.child_pretrain)
    if args.child_train:
        return _train_child(*args.child_train)
    if args.child_embed:
        return _embed_child(*args.child_embed)
    sections = _old_sections()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_ddp:
            sections["1"] = [
                "## 1. torchrun: 1 vs 2 processes (CPU, gloo, one thread each)",
                "",
                "On this 2-core CPU machine this measures the overhead of data-parallel "
                "training (sharding, gradient all-reduce), not a speed-up: with one "
                "thread per process, two processes use both cores. Measured with `"
                f"{_harness.command()}` on {time.strftime('%Y-%m-%d')}.",
                "",
                *_harness.markdown_table(
                    ["method", "data", "s/epoch, 1 process", "s/epoch, 2 processes", "ratio"],
                    ddp_rows(tmp),
                ),
                "",
            ]
        when = f"Measured with `{_harness.command()}` on {time.strftime('%Y-%m-%d')}."
        if not args.skip_backed:
            rows, info = backed_rows(tmp, args.cells)
            sections["2"] = _memory_section(
                f"2. scrobust_embed on {args.cells:,} cells",
                rows,
                f"Cells resampled (Poisson) from {info['name']}; {info['nnz']:,} stored "
                f"values at {args.cells:,} cells. Model d_model 32, 64 tokens per cell, batch "
                "512. Memory growth = peak RSS during the call (opening the file and reading "
                "included) minus RSS before, in a fresh process after a 64-cell warm-up call "
                f"(which pages in torch's kernels). {when}",
                f"Backed, per added cell: memory grows {info['per_cell']:.0f} bytes while X "
                f"grows {info['x_cell']:.0f} bytes ({info['per_cell'] / info['x_cell']:.2f} "
                f"of it: the output, 4 bytes × d_model, and the cell names); the rest is a "
                f"fixed {info['fixed']:.0f} MiB (first use of the backed-reading code and "
                "buffers, one block of tokens), whatever the number of cells.",
            )
        if not args.skip_pretrain:
            rows, info = memory_rows(tmp, args.cells, "--child-pretrain")
            sections["3"] = _memory_section(
                f"3. scrobust_pretrain on {args.cells:,} cells",
                rows,
                "The same cells; one epoch of the default pre-training (views of 50 genes, "
                "binomially thinned), d_model 32, batch 256, one thread. Backed: one pass "
                "checks the file, then each mini-batch's cells are read from it; in memory: "
                "the file is read whole and kept as tokens. Memory growth as in section 2 "
                f"(after a 256-cell warm-up pre-training). {when}",
                f"Backed, per added cell: memory grows {info['per_cell']:.0f} bytes; the rest "
                f"is a fixed {info['fixed']:.0f} MiB (the training working set: padded tensors "
                "of a mini-batch's longest cell, the checking pass's block, allocator "
                "buffers), whatever the number of cells.",
            )
    body = [line for key in sorted(sections) for line in sections[key]]
    _harness.write_results(RESULTS, "Scaling out", body)


def _memory_section(title: str, rows: list[list], intro: str, tail: str) -> list[str]:
    """A results section: title, how it was measured, the memory table, the per-cell note."""
    return [
        f"## {title}: backed vs in memory",
        "",
        intro,
        "",
        *_harness.markdown_table(
            ["input", "cells", "X in memory (MiB)", "memory growth (MiB)", "growth / X", "seconds"],
            rows,
        ),
        "",
        tail,
        "",
    ]


def _old_sections() -> dict[str, list[str]]:
    """The numbered sections of the existing results file (kept when a part is skipped)."""
    out: dict[str, list[str]] = {}
    if not RESULTS.exists():
        return out
    key = None
    for line in RESULTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            key = line[3]
            out[key] = []
        if key is not None:
            out[key].append(line)
    return out


if __name__ == "__main__":
    main()
