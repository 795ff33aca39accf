"""The ``sctorch`` command: ``sctorch demo`` and pipeline subcommands on ``.h5ad`` files.

Every subcommand that writes an ``.h5ad`` refuses to write over an existing file (its own
input included) unless ``--overwrite`` is given, and writes through a temporary file in
the same folder, so a failed run leaves no half-written output and the input untouched.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _keys

logger = logging.getLogger("sctorch")

DEMO_PARTS = ("tcer", "stimpute", "scrobust")


# ------------------------------------------------------------------------------ helpers
def _default(func: Callable, name: str) -> Any:
    """The default of parameter ``name`` of the public function ``func``.

    Every option that stands for a function argument takes its default from here, so the
    command and the Python API cannot drift apart.
    """
    params = inspect.signature(func).parameters
    if name not in params:  # a setting of the method's config class (its "default" preset)
        cls = inspect.signature(func).parameters["config"].annotation
        raise TypeError(
            f"{func.__qualname__}() has no parameter {name!r}; take the default of a config "
            f"setting with _setting(ConfigClass, {name!r}) ({cls})."
        )
    param = params[name]
    if param.default is inspect.Parameter.empty:
        raise TypeError(f"{func.__qualname__}() has no default for {name!r}.")
    return param.default


def _setting(config_cls, name: str) -> Any:
    """The value of setting ``name`` in the ``"default"`` preset of a method's config class.

    Options that stand for config settings (``--epochs``, ``--batch-size``, ...) take their
    default from here, so the command and the Python API cannot drift apart.
    """
    return config_cls.preset("default")[name]


def _set_options(values: list[str] | None, config_cls) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as config settings (VALUE read as JSON, else a string).

    Raises
    ------
    ValueError
        If an option is not ``KEY=VALUE`` or ``KEY`` is not a setting of ``config_cls``.
    """
    import json

    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}.")
        if key not in config_cls.field_names():
            raise ValueError(
                f"--set {key}: not a setting of {config_cls.__name__}; its settings are "
                f"{', '.join(config_cls.field_names())}."
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _add_set_option(p: argparse.ArgumentParser, config_cls) -> None:
    """``--set KEY=VALUE`` (repeatable): any setting of the method's config class."""
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help=f"any setting of {config_cls.__name__} (repeatable; VALUE as JSON, e.g. "
        "--set patience=null --set mask_ratio=[0.1,0.3]); overrides the preset and the "
        "options above",
    )


def _read(path: str, backed: bool = False):
    """An input ``.h5ad``, in memory or (``backed``) opened with ``backed="r"``."""
    import anndata as ad

    p = Path(path)
    _check_input(p, "input")
    return ad.read_h5ad(p, backed="r" if backed else None)


def _check_input(p: Path, what: str) -> None:
    """An input path is an existing file; a folder or a missing path says which."""
    if p.is_dir():
        kind = "a model file (.safetensors)" if what.startswith("--") else "an .h5ad file"
        raise IsADirectoryError(f"{what} {p} is a folder, not {kind}; pass the file itself.")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist.")


#: integer options and the smallest value each accepts (checked before any work)
_INT_MIN = {
    "seed": 0,
    "n_genes": 1,
    "epochs": 1,
    "pretrain_epochs": 1,
    "n_features": 1,
    "batch_size": 1,
    "max_iter": 1,
    "d_model": 1,
    "n_heads": 1,
    "n_neighbors": 1,
}
#: options naming input files, and how messages call them
_INPUTS = {
    "input": "input",
    "query": "query",
    "spatial": "spatial input",
    "reference": "reference",
    "model": "--model",
}


def _check_args(args: argparse.Namespace) -> None:
    """Every argument that can be checked without reading data, before any work.

    Raises
    ------
    ValueError
        For a number out of range (naming the option and the value).
    FileNotFoundError, IsADirectoryError
        For an input file that is missing or a folder.
    """
    import math

    for dest, low in _INT_MIN.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            opt = "--" + dest.replace("_", "-")
            raise ValueError(f"{opt} must be an integer >= {low}, got {value}.")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {lr}.")
    for dest, what in _INPUTS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str):
            _check_input(Path(value), what)


def _check_output(out: str, inputs: list[str], overwrite: bool) -> Path:
    """Refuse a bad output path before any work (see below).

    A folder, an input, an existing file (unless ``overwrite``), or a path whose folder is
    missing, a file or not writable is refused.
    """
    from .models._base import check_writable_folder

    p = Path(out)
    if p.is_dir():
        raise IsADirectoryError(
            f"output {p} is a folder; pass a file path such as {p / 'result.h5ad'}."
        )
    if p.suffix != ".h5ad":
        raise ValueError(f"output {p} must end in .h5ad.")
    same = [i for i in inputs if Path(i).exists() and p.exists() and p.samefile(i)]
    if same and not overwrite:
        raise ValueError(
            f"output {p} is the input file {same[0]}; choose another output or "
            "pass --overwrite to replace the input."
        )
    if p.exists() and not overwrite:
        raise ValueError(f"output {p} already exists; pass --overwrite to replace it.")
    check_writable_folder(p, f"output {p}")  # folder exists, is a folder, can be written
    return p


def _check_model_out(path: str | None, overwrite: bool) -> None:
    """Refuse an existing ``--model-out``, a folder or a missing folder before any work."""
    from .models._base import check_save_path

    if path:
        check_save_path(path, overwrite=overwrite, what="--model-out")


def _write(adata, out: Path) -> None:
    from .models._distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 writes the outputs
        return
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"wrote {out}")


def _common(p: argparse.ArgumentParser, func: Callable, *, device: bool = True) -> None:
    """``--device``, ``--seed`` (defaults from ``func``), ``--overwrite``, ``--quiet``."""
    if device:
        p.add_argument(
            "--device",
            default=_default(func, "device"),
            help="torch device: cpu, cuda, cuda:1, mps (default: cuda, mps, else cpu)",
        )
    p.add_argument(
        "--seed", type=int, default=_default(func, "rng"), help="random seed (default: %(default)s)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow the output to replace an existing file, the input included",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--backed",
        action="store_true",
        help="open the input files with backed='r' and read them by blocks of "
        "cells (for files larger than memory; see docs/scaling.md)",
    )


def _gene_list(value: str | None) -> list[str] | None:
    """``a,b,c`` or ``@file`` (one gene per line) → list of names."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise FileNotFoundError(f"gene list file {path} does not exist.")
        genes = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    else:
        genes = [g.strip() for g in value.split(",")]
    genes = [g for g in genes if g]
    if not genes:
        raise ValueError(f"no gene names in {value!r}.")
    return genes


def _gene_mask(adata, genes_key: str | None):
    if genes_key is None:
        return None
    if genes_key not in adata.var:
        raise KeyError(
            f"--genes-key {genes_key!r} is not a column of var; columns: {list(adata.var.columns)}."
        )
    col = adata.var[genes_key]
    if col.dtype != bool:
        raise ValueError(
            f"var[{genes_key!r}] must be boolean (e.g. highly_variable), found dtype {col.dtype}."
        )
    return col.to_numpy()


def _embeddings(value: str | None):
    """Gene embeddings: a CSV/TSV/Parquet table (genes × dims) or a stImpute set name."""
    if value is None:
        return None
    import pandas as pd

    from . import datasets

    if value.lower() in ("osmfish", "merfish", "mouse_brain"):
        return datasets.esm2_gene_embeddings(value)
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(
            f"gene embeddings file {path} does not exist (expected a .csv, "
            ".tsv or .parquet table, genes × dimensions, gene names as "
            "the first column, or one of osmFISH, MERFISH, Mouse_brain)."
        )
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".tsv", ".txt"):
        sep = "," if path.suffix == ".csv" else "\t"
        return pd.read_csv(path, sep=sep, index_col=0)
    raise ValueError(f"gene embeddings file {path} must be .csv, .tsv or .parquet.")


# ----------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the bundled data and write ``summary.md`` to ``--out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = ["# sctorch demo", ""]
    for name in DEMO_PARTS:
        part = importlib.import_module(f"sctorch._demos.{name}")
        logger.info("demo: %s", name)
        print(f"[sctorch demo] {name} ...", file=sys.stderr, flush=True)
        lines += part.run(out, quick=args.quick, device=args.device)
        lines.append("")
    lines.append(f"\nfinished in {time.perf_counter() - t0:.1f} s")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"results written to {out.resolve()}")
    return 0


def cmd_genomap(args: argparse.Namespace) -> int:
    """``sctorch genomap IN OUT``: place genes on a GenoMap grid."""
    from . import tl

    out = _check_output(args.output, [args.input], args.overwrite)
    adata = _read(args.input, args.backed)
    genes = _gene_list(args.genes)
    mask = _gene_mask(adata, args.genes_key)
    if genes is not None and mask is not None:
        raise ValueError("give --genes or --genes-key, not both.")
    tl.genomap(
        adata,
        layer=args.layer,
        genes=genes if mask is None else mask,
        key_added=args.key_added,
        rng=args.seed,
        progress=not args.quiet,
        max_iter=args.max_iter,
        solver=args.solver,
        **_set_options(args.set, tl.GenoMapConfig),
    )
    _write(adata, out)
    return 0


def cmd_tcer(args: argparse.Namespace) -> int:
    """``sctorch tcer IN OUT``: TCER imputation (train, or impute with a saved model)."""
    from . import tl

    out = _check_output(args.output, [args.input], args.overwrite)
    _check_model_out(args.model_out, args.overwrite)
    adata = _read(args.input, args.backed)
    if args.model:
        model = tl.TCERModel.load(args.model, device=args.device)
        model.impute(
            adata,
            layer=args.layer,
            device=args.device,
            key_added=args.key_added,
            progress=not args.quiet,
        )
    else:
        kw = {
            k: getattr(args, k)
            for k in ("n_features", "epochs", "lr", "batch_size")
            if getattr(args, k) is not None
        }
        model = tl.tcer_impute(
            adata,
            layer=args.layer,
            preset=args.preset,
            device=args.device,
            rng=args.seed,
            key_added=args.key_added,
            progress=not args.quiet,
            return_model=True,
            **(kw | _set_options(args.set, tl.TCERConfig)),
        )
    _write(adata, out)
    if args.model_out:
        _save_model(model, args.model_out, args.overwrite)
    return 0


def cmd_stimpute(args: argparse.Namespace) -> int:
    """``sctorch stimpute SPATIAL REFERENCE OUT``: predict unmeasured spatial genes."""
    from . import tl

    out = _check_output(args.output, [args.spatial, args.reference], args.overwrite)
    adata_sp = _read(args.spatial, args.backed)
    adata_ref = _read(args.reference, args.backed)
    # settings of StImputeConfig: passed when set to other than their default (the
    # options' defaults), so that the preset's own values apply otherwise
    given = {
        "n_neighbors": args.n_neighbors,
        "method": args.method,
        "latent": args.latent,
        "ridge_weight": args.ridge_weight,
        "alpha": args.alpha,
        "epochs": args.epochs,
        "ae_epochs": args.ae_epochs,
        "case_sensitive": not args.case_insensitive,
    }
    base = tl.StImputeConfig()
    kw = {k: v for k, v in given.items() if v != getattr(base, k)}
    result = tl.stimpute(
        adata_sp,
        adata_ref,
        genes=_gene_list(args.genes),
        layer=args.layer,
        ref_layer=args.ref_layer,
        gene_embeddings=_embeddings(args.embeddings),
        preset=args.preset,
        device=args.device,
        rng=args.seed,
        key_added=args.key_added,
        return_adata=args.predicted_only,
        progress=not args.quiet,
        **kw,
    )
    _write(result if args.predicted_only else adata_sp, out)
    return 0


def cmd_scrobust_embed(args: argparse.Namespace) -> int:
    """``sctorch scrobust embed IN OUT``: scRobust cell embeddings in ``obsm``."""
    from . import tl

    out = _check_output(args.output, [args.input], args.overwrite)
    _check_model_out(args.model_out, args.overwrite)
    adata = _read(args.input, args.backed)
    # the settings given (--set wins over the options); embedding reads the input's
    sets = {"input_scale": args.input_scale} | _set_options(args.set, tl.ScRobustConfig)
    if args.model:
        model = tl.ScRobustModel.load(args.model, device=args.device)
    else:
        model = tl.scrobust_pretrain(
            adata,
            layer=args.layer,
            preset=args.preset,
            device=args.device,
            rng=args.seed,
            progress=not args.quiet,
            **(_scrobust_given(args, epochs="epochs", lr="lr") | sets),
        )
    tl.scrobust_embed(
        adata,
        model,
        layer=args.layer,
        **{k: v for k, v in sets.items() if k in ("input_scale", "min_shared_genes")},
        n_tokens=args.n_genes,
        key_added=args.key_added,
        device=args.device,
        rng=args.seed,
        progress=not args.quiet,
    )
    _write(adata, out)
    if args.model_out:
        _save_model(model, args.model_out, args.overwrite)
    return 0


def cmd_scrobust_annotate(args: argparse.Namespace) -> int:
    """``sctorch scrobust annotate QUERY OUT``: cell-type labels from a reference or model."""
    from . import tl

    if args.reference is None and args.model is None:
        raise ValueError(
            "give --reference REF.h5ad with --labels-key, or --model FILE holding "
            "a fine-tuned model."
        )
    if args.reference is not None and args.labels_key is None:
        raise ValueError("--reference needs --labels-key (the obs column of cell types).")
    inputs = [args.query] + ([args.reference] if args.reference else [])
    out = _check_output(args.output, inputs, args.overwrite)
    _check_model_out(args.model_out, args.overwrite)
    query = _read(args.query, args.backed)
    ref = _read(args.reference, args.backed) if args.reference else None
    model = tl.ScRobustModel.load(args.model, device=args.device) if args.model else None
    sets = _set_options(args.set, tl.ScRobustConfig)
    # fine-tuning settings as keywords, pre-training ones (used without --model) and --set
    # in config (by field name); --set wins over the options
    kw = _scrobust_given(
        args, finetune_epochs="epochs", finetune_lr="lr", head="head", d_model=None, n_heads=None
    )
    kw |= {"input_scale": args.input_scale, "n_tokens": args.n_genes}
    if ref is not None:
        kw["class_weight"] = None if args.class_weight == "none" else args.class_weight
    res = tl.scrobust_annotate(
        query,
        ref,
        labels_key=args.labels_key,
        model=model,
        layer=args.layer,
        ref_layer=args.layer,
        preset=args.preset,
        config=_scrobust_given(args, epochs="pretrain_epochs", lr="lr") | sets,
        **{k: v for k, v in kw.items() if k not in sets},
        key_added=args.key_added,
        return_model=bool(args.model_out),
        device=args.device,
        rng=args.seed,
        progress=not args.quiet,
    )
    _write(query, out)
    if args.model_out:
        _save_model(res, args.model_out, args.overwrite)
    return 0


# ------------------------------------------------------------------------------- parser
def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the methods on bundled real data",
        description="Run TCER, stImpute and scRobust on the bundled real data "
        "and write .h5ad results, PNG figures and summary.md to "
        "--out.",
    )
    demo.add_argument("--out", default="sctorch_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda, mps, else cpu)")
    demo.add_argument("--quick", action="store_true", help="smaller settings, for a smoke test")
    demo.set_defaults(func=cmd_demo)


def _add_genomap(sub) -> None:
    from . import tl

    f, key = tl.genomap, _keys.GENOMAP
    p = sub.add_parser(
        "genomap",
        help="place genes on a GenoMap grid (sct.tl.genomap)",
        description="Place the genes of IN on a 2-D grid by Gromov-Wasserstein matching of "
        "gene-gene correlation to grid distance (TCER paper, GenoMap "
        f"construction). Writes var['{key}_row'], var['{key}_col'] and "
        f"uns['{key}'] into OUT. Input: raw counts or log-normalised.",
    )
    p.add_argument("input", metavar="IN", help="input .h5ad (cells x genes)")
    p.add_argument("output", metavar="OUT", help="output .h5ad")
    p.add_argument("--layer", default=_default(f, "layer"), help="layer to read (default: X)")
    p.add_argument(
        "--genes",
        default=_default(f, "genes"),
        help="genes to place: 'A,B,C' or '@file' with one name per line (default: all)",
    )
    p.add_argument(
        "--genes-key",
        default=None,
        help="boolean var column choosing the genes, e.g. highly_variable",
    )
    p.add_argument(
        "--max-iter",
        type=int,
        default=_setting(tl.GenoMapConfig, "max_iter"),
        help="GW iterations (default: %(default)s)",
    )
    p.add_argument(
        "--solver",
        choices=("exchange", "pot"),
        default=_setting(tl.GenoMapConfig, "solver"),
        help="exact GW solver (default: %(default)s)",
    )
    p.add_argument(
        "--key-added", default=_default(f, "key_added"), help="output key (default: %(default)s)"
    )
    _add_set_option(p, tl.GenoMapConfig)
    _common(p, f, device=False)
    p.set_defaults(func=cmd_genomap)


def _add_tcer(sub) -> None:
    from . import tl

    f = tl.tcer_impute
    p = sub.add_parser(
        "tcer",
        help="impute dropouts with TCER (sct.tl.tcer_impute)",
        description="Impute the raw counts of IN with TCER (ER-Net on GenoMap images; builds "
        "the GenoMap first if IN has none). Writes layers[KEY] (log1p-normalised, "
        "same cells and genes) and uns[KEY] into OUT. With --model, imputes with a "
        "saved model instead of training.",
    )
    p.add_argument("input", metavar="IN", help="input .h5ad of raw counts")
    p.add_argument("output", metavar="OUT", help="output .h5ad")
    p.add_argument(
        "--layer", default=_default(f, "layer"), help="layer holding the counts (default: X)"
    )
    p.add_argument(
        "--preset",
        choices=tuple(tl.TCERConfig.PRESETS),
        default=_default(f, "preset"),
        help="settings: 'default' (sctorch's: cross-cell context, Poisson "
        "blind-spot loss, posterior output) or the paper's "
        "(default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: preset)")
    p.add_argument("--n-features", type=int, default=None, help="ER-Net width (default: preset)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="GenoMaps per batch (default: preset)"
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: preset)")
    p.add_argument("--model", default=None, help="impute with this saved model (.safetensors)")
    p.add_argument("--model-out", default=None, help="save the trained model here")
    p.add_argument(
        "--key-added", default=_default(f, "key_added"), help="output layer (default: %(default)s)"
    )
    _add_set_option(p, tl.TCERConfig)
    _common(p, f)
    p.set_defaults(func=cmd_tcer)


def _add_stimpute(sub) -> None:
    from . import tl

    f, c = tl.stimpute, tl.StImputeConfig
    p = sub.add_parser(
        "stimpute",
        help="predict unmeasured spatial genes (sct.tl.stimpute)",
        description="Predict, for the cells of SPATIAL, genes measured only in REFERENCE "
        "(scRNA-seq) with stImpute. Both raw counts or both log-normalised "
        "(detected). Writes obsm[KEY] and uns[KEY] into OUT (a copy of SPATIAL), "
        "or, with --predicted-only, an AnnData of the predicted genes that keeps "
        f"obs and obsm['{_keys.SPATIAL}'].",
    )
    p.add_argument("spatial", metavar="SPATIAL", help="spatial .h5ad (cells x measured genes)")
    p.add_argument("reference", metavar="REFERENCE", help="scRNA-seq reference .h5ad")
    p.add_argument("output", metavar="OUT", help="output .h5ad")
    p.add_argument(
        "--genes",
        default=_default(f, "genes"),
        help="genes to predict: 'A,B,C' or '@file' (default: all reference genes "
        "not measured in SPATIAL)",
    )
    p.add_argument(
        "--layer",
        "--layer-sp",
        dest="layer",
        default=_default(f, "layer"),
        help="layer of SPATIAL (default: X)",
    )
    p.add_argument(
        "--ref-layer",
        "--layer-ref",
        dest="ref_layer",
        default=_default(f, "ref_layer"),
        help="layer of REFERENCE (default: X)",
    )
    p.add_argument(
        "--embeddings",
        default=None,
        help="gene embeddings (genes x dims) as .csv/.tsv/.parquet, or osmFISH, "
        "MERFISH, Mouse_brain for stImpute's precomputed ESM-2 sets "
        "(default: expression similarity only)",
    )
    p.add_argument(
        "--method",
        choices=("transfer", "gnn"),
        default=_setting(c, "method"),
        help="k-NN + ridge transfer (default) or the paper's GNN",
    )
    p.add_argument(
        "--preset",
        choices=("default", "paper"),
        default=_default(f, "preset"),
        help="'paper': the authors' choices (distance graph, in-sample "
        "reliability, 0.7/0.3 blend; implies the GNN)",
    )
    p.add_argument(
        "--latent",
        choices=("pca", "autoencoder"),
        default=_setting(c, "latent"),
        help="latent space of the transfer (default: %(default)s)",
    )
    p.add_argument(
        "--n-neighbors",
        type=int,
        default=_setting(c, "n_neighbors"),
        help="nearest reference cells per spatial cell (default: chosen by "
        "cross-validation on the measured genes)",
    )
    p.add_argument(
        "--ridge-weight",
        type=float,
        default=_setting(c, "ridge_weight"),
        help="weight of the ridge term of the transfer (default: chosen by "
        "cross-validation on the measured genes)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=_setting(c, "alpha"),
        help="with --method gnn: GNN weight of the final blend (default: 0.7, "
        "0.5 above 10,000 cells)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=_setting(c, "epochs"),
        help="with --method gnn: GNN epochs per round (default: %(default)s)",
    )
    p.add_argument(
        "--ae-epochs",
        type=int,
        default=_setting(c, "ae_epochs"),
        help="autoencoder epochs (GNN, or --latent autoencoder; default: %(default)s)",
    )
    p.add_argument(
        "--case-insensitive",
        action="store_true",
        help="match gene names ignoring case (names are never changed)",
    )
    p.add_argument(
        "--predicted-only",
        action="store_true",
        help="write an AnnData of the predicted genes instead",
    )
    p.add_argument(
        "--key-added", default=_default(f, "key_added"), help="output key (default: %(default)s)"
    )
    _common(p, f)
    p.set_defaults(func=cmd_stimpute)


def _scrobust_given(args: argparse.Namespace, **names: str | None) -> dict[str, Any]:
    """The scRobust settings given on the command line (``None``: left to the preset).

    ``names``: setting -> option dest (``None``: leave the setting out); ``d_model`` and
    ``n_heads`` are read unless named.
    """
    names = {"d_model": "d_model", "n_heads": "n_heads", **names}
    out = {k: getattr(args, dest) for k, dest in names.items() if dest is not None}
    return {k: v for k, v in out.items() if v is not None}


def _scrobust_args(p: argparse.ArgumentParser, func: Callable) -> None:
    """Options shared by ``scrobust embed`` and ``annotate``.

    ``func`` is the function that reads the input (``--layer``); settings of
    :class:`~sctorch.scrobust.ScRobustConfig` default to ``None``, the preset's value
    (``--input-scale``: the config's default).
    """
    from .scrobust import ScRobustConfig

    p.add_argument("--layer", default=_default(func, "layer"), help="layer to read (default: X)")
    p.add_argument(
        "--input-scale",
        choices=("counts", "log1p", "auto"),
        default=ScRobustConfig.input_scale,
        help="scale of the input (default: %(default)s)",
    )
    p.add_argument("--model", default=None, help="a saved scRobust model file (.safetensors)")
    p.add_argument("--model-out", default=None, help="save the model to this .safetensors file")
    p.add_argument(
        "--preset",
        choices=("default", "paper"),
        default=_default(func, "preset"),
        help="settings of pre-training (and fine-tuning): the measured default or "
        "the paper's (default: %(default)s)",
    )
    p.add_argument(
        "--d-model",
        type=int,
        default=None,
        help="pre-training: token dimension (default: the preset's)",
    )
    p.add_argument(
        "--n-heads",
        type=int,
        default=None,
        help="pre-training: attention heads (default: the preset's)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default: the preset's)",
    )


def _add_scrobust(sub) -> None:
    from . import tl
    from .scrobust import ScRobustConfig

    pre, emb, ann = tl.scrobust_pretrain, tl.scrobust_embed, tl.scrobust_annotate
    p = sub.add_parser(
        "scrobust",
        help="scRobust embeddings and annotation",
        description="scRobust (Transformer on gene tokens): 'embed' writes "
        f"obsm['{_keys.SCROBUST_EMBED}'], 'annotate' writes obs "
        "labels.",
    )
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = ssub.add_parser(
        "embed",
        help="cell embeddings (sct.tl.scrobust_embed)",
        description="Embed the cells of IN with a scRobust encoder (pre-trained on IN unless "
        "--model is given) and write obsm[KEY] into OUT.",
    )
    e.add_argument("input", metavar="IN", help="input .h5ad")
    e.add_argument("output", metavar="OUT", help="output .h5ad")
    _scrobust_args(e, pre)
    e.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="pre-training epochs (default: the preset's)",
    )
    e.add_argument(
        "--n-genes",
        type=int,
        default=_default(emb, "n_tokens"),
        help="highly unique genes per cell at embedding (default: %(default)s)",
    )
    e.add_argument(
        "--key-added", default=_default(emb, "key_added"), help="obsm key (default: %(default)s)"
    )
    _add_set_option(e, ScRobustConfig)
    _common(e, emb)
    e.set_defaults(func=cmd_scrobust_embed)
    a = ssub.add_parser(
        "annotate",
        help="cell-type annotation (sct.tl.scrobust_annotate)",
        description="Fine-tune a scRobust classifier on --reference (labels in "
        "--labels-key) or use a fine-tuned --model, then write obs[KEY] and "
        f"obs['{_keys.SCROBUST_CONFIDENCE}'] for the cells of QUERY into OUT.",
    )
    a.add_argument("query", metavar="QUERY", help="query .h5ad")
    a.add_argument("output", metavar="OUT", help="output .h5ad")
    a.add_argument("--reference", default=None, help="labelled reference .h5ad")
    a.add_argument(
        "--labels-key",
        default=_default(ann, "labels_key"),
        help="obs column of the reference labels",
    )
    _scrobust_args(a, ann)
    a.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="pre-training epochs when no --model is given (default: the preset's)",
    )
    a.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs (default: the preset's)",
    )
    a.add_argument(
        "--head",
        choices=("wide_and_deep", "deep", "wide"),
        default=None,
        help="classifier: linear path beside the Transformer, the paper's deep "
        "classifier, or the linear path alone (default: the preset's)",
    )
    a.add_argument(
        "--n-genes",
        type=int,
        default=ScRobustConfig.n_tokens,
        help="highly unique genes per cell (default: %(default)s, as the paper)",
    )
    a.add_argument(
        "--class-weight",
        choices=["balanced", "none"],
        default=ScRobustConfig.class_weight,
        help="cross-entropy class weights in fine-tuning (default: %(default)s)",
    )
    a.add_argument(
        "--key-added", default=_default(ann, "key_added"), help="obs key (default: %(default)s)"
    )
    _add_set_option(a, ScRobustConfig)
    _common(a, ann)
    a.set_defaults(func=cmd_scrobust_annotate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sctorch`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sctorch",
        description="Deep learning on gene-gene relationships for sparse single-cell and "
        "spatial data (TCER, stImpute, scRobust).",
    )
    parser.add_argument("--version", action="version", version=f"sctorch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_genomap, _add_tcer, _add_stimpute, _add_scrobust):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sctorch`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        _check_args(args)
        return int(args.func(args) or 0)
    except (ValueError, KeyError, TypeError, OSError, ImportError) as err:
        print(f"sctorch {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a pipeline needs a clear message and a status
        print(
            f"sctorch {args.command}: failed: {type(err).__name__}: {err} "
            "(run with -v for the log)",
            file=sys.stderr,
        )
        if args.verbose:
            raise
        return 1
    finally:
        _end_distributed()


def _save_model(model, path: str, overwrite: bool) -> None:
    """Save ``model`` (rank 0 only, under torchrun) and say so."""
    from .models._distributed import is_main_process

    model.save(path, overwrite=overwrite)
    if is_main_process():
        print(f"wrote {path}")


def _end_distributed() -> None:
    """Under torchrun, wait for every rank and close the process group."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
