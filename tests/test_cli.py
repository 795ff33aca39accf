import re
import subprocess
import sys

import numpy as np

import sctorch as sct
from sctorch.cli import main


def test_import_is_light():
    code = ("import sys, sctorch; heavy = [m for m in ('torch', 'ot', 'torch_geometric', 'esm', "
            "'squidpy', 'matplotlib.pyplot') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert sct.__version__


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert sct.__version__ in capsys.readouterr().out
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_demo_quick_writes_summary(tmp_path, capsys):
    from sctorch._utils import log_normalize

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    m = re.search(r"\| medium \(0\.5 %\) \| ([0-9.]+) \|", summary)
    assert m is not None
    # recompute the printed figure independently
    ref = sct.pp.select_reference(sct.datasets.intestine_moor2018(bundled=True))
    sct.pp.simulate_efficiency_loss(ref, efficiency_shape=10, rng=0)
    r = sct.metrics.gene_pearson(log_normalize(ref.layers["observed"]), log_normalize(ref.X))
    assert float(m.group(1)) == round(float(np.nanmean(r)), 3)
    # TCER row reports the observed figure of the same cells and an imputed one
    rows = dict(re.findall(r"\| (observed|TCER) \| ([0-9.]+) \|", summary))
    assert float(rows["observed"]) == round(float(np.nanmean(r)), 3)
    assert 0.0 < float(rows["TCER"]) <= 1.0
    # stImpute held-out Pearson and scRobust annotation figures are there
    assert re.search(r"\| 17 \| (0\.\d+) \| (0\.\d+) \|", summary)
    assert re.search(r"\| accuracy \| (0\.\d+) \|", summary)
    for name in ("tcer_intestine.h5ad", "tcer_genomap_by_zone.png", "tcer_umap.png",
                 "stimpute_drosophila.h5ad", "stimpute_heldout.png", "ifnb_scrobust.h5ad",
                 "scrobust_umap.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    import anndata as ad

    res = ad.read_h5ad(tmp_path / "tcer_intestine.h5ad")
    assert "tcer" in res.layers and res.layers["tcer"].shape == res.shape
