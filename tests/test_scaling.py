"""Beyond one process: torchrun data parallelism (gloo, CPU) and backed (on-disk) input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import sctorch as sct

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(args, n=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


# (method, tolerance on the relative loss difference, on the weights' max difference).
# TCER: each rank draws the same masks for the global batch and trains on its half; the
# mean of the two halves' masked losses differs from the global mean only in how many
# masked pixels each half has. scRobust: NT-Xent's negatives are the other cells of the
# rank's half-batch (15 instead of 31 here), which lowers the loss by a few per cent and
# changes every Adam step a little: 3 epochs × 6 steps at lr 1e-3 can move a weight by up
# to about 0.02 either way.
TOLERANCES = {"tcer": (0.02, 0.01), "scrobust": (0.05, 0.03)}


@pytest.mark.parametrize("method", sorted(TOLERANCES))
def test_two_processes_match_one(method, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), method, str(one)],
        check=True,
        env=_env(),
        timeout=300,
    )
    _torchrun([str(HERE / "ddp_worker.py"), method, str(two)])
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    # the ranks end with identical weights (gradients are averaged, steps identical)
    assert (tmp_path / "two.json.rank0").read_text() == (tmp_path / "two.json.rank1").read_text()
    loss_tol, w_tol = TOLERANCES[method]
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=loss_tol)
    assert np.abs(np.subtract(a["weights"], b["weights"])).max() < w_tol
    assert a["weights"] != b["weights"]  # each rank trained on its half, not the whole batch


def test_cli_under_torchrun_writes_once_and_records_world_size(tmp_path):
    a = sct.datasets.ifnb_pbmc(bundled=True)[:120].copy()
    src, out, model = tmp_path / "in.h5ad", tmp_path / "out.h5ad", tmp_path / "m.safetensors"
    a.write_h5ad(src)
    res = _torchrun(
        [
            "-m",
            "sctorch",
            "scrobust",
            "embed",
            str(src),
            str(out),
            "--d-model",
            "16",
            "--n-heads",
            "2",
            "--epochs",
            "1",
            "--quiet",
            "--model-out",
            str(model),
        ]
    )
    assert res.stdout.count(f"wrote {out}") == 1
    b = ad.read_h5ad(out)
    assert b.obsm["X_scrobust"].shape == (120, 16)
    assert int(b.uns["X_scrobust"]["params"]["world_size"]) == 2
    assert isinstance(sct.models.load(model), sct.models.ScRobustModel)


def test_tcer_predict_on_backed_input_equals_in_memory(tmp_path):
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:120, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:36]].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    model = sct.tl.tcer_impute(
        a, n_features=4, epochs=1, rng=0, progress=False, return_model=True, copy=True
    )[1]
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    genes = list(a.var_names[[3, 0, 7]])
    full = model.predict(a, progress=False)
    sub = model.predict(backed, genes=genes, batch_size=17, progress=False)
    np.testing.assert_allclose(sub, full[:, [3, 0, 7]], rtol=1e-6, atol=1e-6)
    mm = np.lib.format.open_memmap(
        tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(a.n_obs, 3)
    )
    model.predict(backed, genes=genes, batch_size=50, progress=False, out=mm)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), sub, rtol=1e-6, atol=1e-6)
    with pytest.raises(KeyError, match=r"not in adata\.var_names"):
        model.predict(backed, genes=["nope"], progress=False)
    with pytest.raises(ValueError, match="out has shape"):
        model.predict(backed, genes=genes, out=np.zeros((2, 2)), progress=False)
    backed.file.close()


def test_tcer_trains_from_a_backed_file_as_from_memory(tmp_path):
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:150, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:30]].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    sct.tl.genomap(a, rng=0, progress=False)
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    from sctorch.tcer import TCERConfig

    cfg = TCERConfig(n_features=4, epochs=2)
    mem = sct.models.TCERModel.from_genomap(a, cfg).fit(a, rng=0, progress=False)
    disk = sct.models.TCERModel.from_genomap(backed, cfg).fit(backed, rng=0, progress=False)
    assert disk.scale == mem.scale
    assert disk.history == mem.history
    for k, v in mem.module.state_dict().items():
        np.testing.assert_array_equal(disk.module.state_dict()[k].numpy(), v.numpy())
    backed.file.close()


def test_genomap_and_tcer_impute_on_a_backed_file_equal_in_memory(tmp_path):
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:150, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:30]].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    kw = dict(n_features=4, epochs=2, rng=0, progress=False)
    mem = sct.tl.tcer_impute(a, copy=True, **kw)
    for f in (sct.tl.genomap, sct.tl.tcer_impute):  # refused before any work
        with pytest.raises(ValueError, match="copy=True cannot copy"):
            f(backed, copy=True, progress=False)
    sct.tl.tcer_impute(backed, **kw)  # builds the GenoMap from the file, then trains from it
    for col in ("genomap_row", "genomap_col"):
        np.testing.assert_array_equal(backed.var[col], mem.var[col])
    np.testing.assert_array_equal(backed.layers["tcer"], mem.layers["tcer"])
    np.testing.assert_array_equal(
        backed.uns["tcer"]["params"]["beta_fitted"], mem.uns["tcer"]["params"]["beta_fitted"]
    )
    assert ad.read_h5ad(path).layers.keys() == set()  # the file itself is not written
    backed.file.close()


def test_simulation_and_reference_selection_on_a_backed_file_equal_in_memory(tmp_path):
    a = sct.datasets.intestine_moor2018(bundled=True)[:300].copy()
    a = a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()
    a.write_h5ad(tmp_path / "c.h5ad")
    b = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    ref_mem, ref_disk = sct.pp.select_reference(a), sct.pp.select_reference(b)
    assert not ref_disk.isbacked and ref_disk.shape == ref_mem.shape
    assert (ref_disk.X != ref_mem.X).nnz == 0
    mem = sct.pp.simulate_efficiency_loss(a, rng=3, copy=True)
    with pytest.raises(ValueError, match="copy=True cannot copy"):
        sct.pp.simulate_efficiency_loss(b, rng=3, copy=True)
    sct.pp.simulate_efficiency_loss(b, rng=3)
    assert (b.layers["observed"] != mem.layers["observed"]).nnz == 0
    assert b.layers["observed"].dtype == mem.layers["observed"].dtype
    np.testing.assert_array_equal(b.obs["efficiency"], mem.obs["efficiency"])
    b.file.close()
