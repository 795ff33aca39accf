import re
import subprocess
import sys

import numpy as np
import pytest

import sctorch as sct
from sctorch.cli import main


def test_import_is_light():
    code = (
        "import sys, sctorch; heavy = [m for m in ('torch', 'ot', 'torch_geometric', 'esm', "
        "'squidpy', 'matplotlib.pyplot') if m in sys.modules]; print(heavy)"
    )
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
    ref = sct.pp.select_reference(sct.datasets.ifnb_pbmc(bundled=True))
    sct.pp.simulate_efficiency_loss(ref, efficiency_shape=10, rng=0)
    r = sct.metrics.gene_pearson(log_normalize(ref.layers["observed"]), log_normalize(ref.X))
    assert float(m.group(1)) == round(float(np.nanmean(r)), 3)
    # TCER row reports the observed figure of the same cells and an imputed one
    down, full = summary.split("## TCER at full depth")
    rows = dict(re.findall(r"\| (observed|TCER) \| ([0-9.]+) \|", down))
    assert float(rows["observed"]) == round(float(np.nanmean(r)), 3)
    assert 0.0 < float(rows["TCER"]) <= 1.0
    assert re.search(r"\| kNN smoothing \| (0\.\d+) \|", down)
    # the full-depth table: the input itself scores 0 on both scaled metrics
    assert "| no denoising | 0.000 | 0.000 |" in full
    assert re.search(r"\| TCER \| -?\d\.\d{3} \| -?\d+\.\d{3} \|", full)
    # stImpute held-out Pearson and scRobust annotation figures are there
    assert re.search(r"\| 17 \| (0\.\d+) \| (0\.\d+) \|", summary)
    assert re.search(r"\| accuracy \| (0\.\d+) \|", summary)
    for name in (
        "tcer_ifnb.h5ad",
        "tcer_genomap_by_cell_type.png",
        "tcer_umap.png",
        "stimpute_drosophila.h5ad",
        "stimpute_heldout.png",
        "ifnb_scrobust.h5ad",
        "scrobust_umap.png",
    ):
        assert (tmp_path / name).stat().st_size > 1000, name
    import anndata as ad

    res = ad.read_h5ad(tmp_path / "tcer_ifnb.h5ad")
    assert "tcer" in res.layers and res.layers["tcer"].shape == res.shape


# every option of a subcommand that stands for a function argument, with the argument(s)
# it is passed to; a flag marked "not" is the negation of a boolean argument
_NOT = object()
# a setting of a config class whose option defaults to None: the chosen preset's value
_PRESET = object()


def _signature_map():
    tl = sct.tl
    return {
        "genomap": {
            "layer": [(tl.genomap, "layer")],
            "genes": [(tl.genomap, "genes")],
            "max_iter": [(tl.GenoMapConfig, "max_iter")],
            "solver": [(tl.GenoMapConfig, "solver")],
            "key_added": [(tl.genomap, "key_added")],
            "seed": [(tl.genomap, "rng")],
            "quiet": [(tl.genomap, "progress", _NOT)],
        },
        "tcer": {
            **{k: [(tl.tcer_impute, k)] for k in ("layer", "preset", "device", "key_added")},
            # settings whose option defaults to None: the chosen preset's value
            **{
                k: [(tl.TCERConfig, k, _PRESET)]
                for k in ("epochs", "n_features", "batch_size", "lr")
            },
            "seed": [(tl.tcer_impute, "rng")],
            "quiet": [(tl.tcer_impute, "progress", _NOT)],
        },
        "stimpute": {
            **{
                k: [(tl.stimpute, k)]
                for k in ("genes", "layer", "ref_layer", "device", "key_added", "preset")
            },
            # settings of the config: the option's default is the default preset's value
            **{
                k: [(tl.StImputeConfig, k)]
                for k in ("n_neighbors", "alpha", "epochs", "ae_epochs", "method", "latent")
            },
            "ridge_weight": [(tl.StImputeConfig, "ridge_weight")],
            "case_insensitive": [(tl.StImputeConfig, "case_sensitive", _NOT)],
            "seed": [(tl.stimpute, "rng")],
            "quiet": [(tl.stimpute, "progress", _NOT)],
        },
        "scrobust embed": {
            **{k: [(tl.scrobust_pretrain, k), (tl.scrobust_embed, k)] for k in ("layer", "device")},
            "input_scale": [(tl.ScRobustConfig, "input_scale")],
            "preset": [(tl.scrobust_pretrain, "preset")],
            # settings whose option defaults to None: the chosen preset's value
            **{
                k: [(tl.ScRobustConfig, k, _PRESET)] for k in ("d_model", "n_heads", "lr", "epochs")
            },
            "n_genes": [(tl.scrobust_embed, "n_tokens")],
            "key_added": [(tl.scrobust_embed, "key_added")],
            "seed": [(tl.scrobust_pretrain, "rng"), (tl.scrobust_embed, "rng")],
            "quiet": [
                (tl.scrobust_pretrain, "progress", _NOT),
                (tl.scrobust_embed, "progress", _NOT),
            ],
        },
        "scrobust annotate": {
            **{
                k: [(tl.scrobust_annotate, k)]
                for k in ("labels_key", "layer", "key_added", "device", "preset")
            },
            **{k: [(tl.ScRobustConfig, k)] for k in ("input_scale", "class_weight")},
            "n_genes": [(tl.ScRobustConfig, "n_tokens")],
            **{
                k: [(tl.ScRobustConfig, k, _PRESET)]
                for k in ("d_model", "n_heads", "lr", "head", "epochs")
            },
            "pretrain_epochs": [(tl.ScRobustConfig, "epochs", _PRESET)],
            "seed": [(tl.scrobust_annotate, "rng")],
            "quiet": [(tl.scrobust_annotate, "progress", _NOT)],
        },
    }


# options of the command itself, with no function argument behind them
_CLI_ONLY = {
    "help",
    "input",
    "output",
    "query",
    "spatial",
    "reference",
    "genes_key",
    "model",
    "model_out",
    "overwrite",
    "backed",
    "embeddings",  # stimpute: a file name, read into gene_embeddings=
    "predicted_only",  # stimpute: return_adata=True
    "func",
    "action",
    "set",  # --set KEY=VALUE: any setting of the method's config class
}


def _subcommands(parser, prefix=""):
    """``{"tcer": parser, "scrobust embed": parser, ...}`` for every leaf subcommand."""
    import argparse

    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _subcommands(sub, f"{prefix}{name} ")
                out.update(inner or {f"{prefix}{name}": sub})
    return out


def test_cli_defaults_are_the_functions_defaults():
    import inspect

    from sctorch import _keys
    from sctorch.cli import build_parser

    subs = _subcommands(build_parser())
    mapping = _signature_map()
    assert set(subs) == set(mapping) | {"demo"}
    for name, options in mapping.items():
        parser = subs[name]
        dests = {a.dest for a in parser._actions}
        # a new option must be mapped here (or declared command-only) to be accepted
        assert dests - _CLI_ONLY == set(options), name
        for dest, targets in options.items():
            cli = parser.get_default(dest)
            for func, param, *neg in targets:
                if neg and neg[0] is _PRESET:
                    assert cli is None and param in func.field_names(), (name, dest)
                    continue
                expected = inspect.signature(func).parameters[param].default
                if neg:
                    expected = not expected
                if param == "class_weight":
                    assert cli == ("none" if expected is None else expected), (name, dest)
                else:
                    assert cli == expected and type(cli) is type(expected), (name, dest, param)
    # the output keys the commands write by default are the registry's
    assert subs["genomap"].get_default("key_added") == _keys.GENOMAP
    assert subs["tcer"].get_default("key_added") == _keys.TCER
    assert subs["stimpute"].get_default("key_added") == _keys.STIMPUTE
    assert subs["scrobust embed"].get_default("key_added") == _keys.SCROBUST_EMBED
    assert subs["scrobust annotate"].get_default("key_added") == _keys.SCROBUST_LABEL


# ----------------------------------------------------------------------------- issue 24
def _small_h5ad(tmp_path):
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(0)
    a = ad.AnnData(sparse.csr_matrix(rng.poisson(1.0, (20, 12)).astype(np.float32)))
    a.var_names = [f"g{i}" for i in range(12)]
    a.obs["t"] = ["x", "y"] * 10
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    return path


def _no_work(monkeypatch):
    import functools

    def failing(orig):
        @functools.wraps(orig)  # the parser reads the defaults from the signature
        def fail(*args, **kwargs):
            raise AssertionError("work started before the arguments were checked")

        return fail

    for name in (
        "tcer_impute",
        "genomap",
        "scrobust_pretrain",
        "scrobust_embed",
        "scrobust_annotate",
        "stimpute",
    ):
        monkeypatch.setattr(sct.tl, name, failing(getattr(sct.tl, name)))
    for cls in (sct.tl.ScRobustModel, sct.tl.TCERModel):
        monkeypatch.setattr(cls, "load", failing(cls.load))


def _cases(tmp_path):
    src = _small_h5ad(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.h5ad").mkdir()
    (tmp_path / "folder").mkdir()
    out = str(tmp_path / "out.h5ad")
    unwritable = "/proc/sctorch_test_out"  # a folder no one can create files in
    return {
        "model_out_unwritable": (
            ["tcer", str(src), out, "--model-out", f"{unwritable}.safetensors"],
            r"--model-out .*cannot (be )?writ",
        ),
        "model_out_parent_is_file": (
            ["tcer", str(src), out, "--model-out", str(tmp_path / "afile" / "m.safetensors")],
            r"--model-out .*afile is a file, not a folder",
        ),
        "out_unwritable": (["genomap", str(src), f"{unwritable}.h5ad"], r"cannot (be )?writ"),
        "out_parent_is_file": (
            ["genomap", str(src), str(tmp_path / "afile" / "o.h5ad")],
            r"afile is a file, not a folder",
        ),
        "out_is_folder": (["genomap", str(src), str(tmp_path / "adir.h5ad")], r"is a folder"),
        "input_is_folder": (
            ["genomap", str(tmp_path / "folder"), out],
            r"input .*folder is a folder, not an \.h5ad file",
        ),
        "model_is_folder": (
            ["tcer", str(src), out, "--model", str(tmp_path / "folder")],
            r"--model .*folder is a folder",
        ),
        "model_missing": (
            ["tcer", str(src), out, "--model", str(tmp_path / "nope.safetensors")],
            r"--model .*nope\.safetensors does not exist",
        ),
        "n_genes_0": (["scrobust", "embed", str(src), out, "--n-genes", "0"], r"--n-genes.*0"),
        "seed_negative": (["tcer", str(src), out, "--seed", "-1"], r"--seed.*-1"),
        "epochs_0": (["tcer", str(src), out, "--epochs", "0"], r"--epochs.*0"),
        "lr_negative": (["tcer", str(src), out, "--lr", "-0.1"], r"--lr.*-0\.1"),
        "pretrain_epochs_0": (
            [
                "scrobust",
                "annotate",
                str(src),
                out,
                "--reference",
                str(src),
                "--labels-key",
                "t",
                "--pretrain-epochs",
                "0",
            ],
            r"--pretrain-epochs.*0",
        ),
    }


_CASE_NAMES = [
    "model_out_unwritable",
    "model_out_parent_is_file",
    "out_unwritable",
    "out_parent_is_file",
    "out_is_folder",
    "input_is_folder",
    "model_is_folder",
    "model_missing",
    "n_genes_0",
    "seed_negative",
    "epochs_0",
    "lr_negative",
    "pretrain_epochs_0",
]


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_cli_checks_paths_and_arguments_before_any_work(tmp_path, monkeypatch, capsys, case):
    argv, match = _cases(tmp_path)[case]
    _no_work(monkeypatch)
    assert main([*argv, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "out.h5ad").exists()
