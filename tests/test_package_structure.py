"""The shape of the public surface, over every public function of sct.pp, tl, pl and metrics.

After Scanpy's ``tests/test_package_structure.py``: the data arguments come first (the
first is named ``adata…`` unless listed in ``NOT_ANNDATA_FIRST`` with the reason), every
other parameter is keyword-only, at most ``MAX_PARAMS`` parameters (``random_state`` and
``**kwargs`` count), ``copy`` keyword-only and ``False`` by default, ``-> AnnData | None``
where ``copy`` exists, every parameter documented in the numpydoc Parameters section (and
nothing documented that the signature lacks), and ``random_state=`` beside every ``rng=``.

A (function, check) pair that does not hold yet is listed in ``XFAIL`` with the reason;
the xfail is strict, so fixing the function without removing the entry turns the test red.
The package-level checks (version from the installed metadata, ``py.typed``) are at the end.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import warnings
from pathlib import Path

import pytest
from numpydoc.docscrape import FunctionDoc

import sctorch as sct

MAX_PARAMS = 15  # Scanpy's largest tool (leiden) takes 15
MODULES = {"pp": sct.pp, "tl": sct.tl, "pl": sct.pl, "metrics": sct.metrics}

# Functions whose data arguments are not an AnnData first: {name: (data arguments, reason)}.
NOT_ANNDATA_FIRST = {
    "pp.esm_gene_embeddings": (
        ("genes", "sequences"),
        "takes gene names or an AnnData, and their protein sequences",
    ),
    "tl.stimpute_gene_graph": (("genes",), "builds a graph over gene names, not cells"),
    "tl.genomap_to_genes": (
        ("images", "adata"),
        "maps (n_cells, H, W) images back onto the AnnData's genes",
    ),
    **{
        f"metrics.{name}": (("a", "b"), "compares two matrices (arrays, sparse, or AnnData)")
        for name in (
            "cell_cosine",
            "cell_mse",
            "cell_pearson",
            "gene_cosine",
            "gene_mse",
            "gene_pearson",
            "pairwise_scores",
        )
    },
    "metrics.clustering_scores": (("labels_true", "labels_pred"), "compares two labellings"),
    "metrics.denoising_scores": (
        ("train", "test", "denoised"),
        "scores a denoiser's output against held-out counts (the openproblems task's inputs)",
    ),
}
# Further positional data arguments after the AnnData ones: {name: (names, reason)}.
EXTRA_DATA_ARGS = {
    "tl.scrobust_embed": (("model",), "the trained model the embedding applies"),
    "tl.scrobust_pathway_scores": (
        ("gene_sets", "model"),
        "the gene sets scored and the trained model",
    ),
    "tl.scrobust_marker_genes": (
        ("groupby", "model"),
        "the obs grouping (as in sc.tl.rank_genes_groups) and the model",
    ),
    "metrics.cluster_and_score": (("labels_key",), "the obs column scored against"),
}

# Functions whose primary output is a table: they return it, and (copy, table) with copy=True.
RETURNS_TABLE = {"tl.stimpute_cv": "its per-gene cross-validation table"}

# (function, check) pairs that fail today, with the reason; strict: remove when fixed.
XFAIL: dict[tuple[str, str], str] = {}


def _public_functions() -> dict[str, object]:
    out = {}
    for prefix, module in MODULES.items():
        for name in getattr(module, "__all__", dir(module)):
            obj = getattr(module, name)
            if inspect.isfunction(obj) and not name.startswith("_"):
                out[f"{prefix}.{name}"] = obj
    return out


FUNCTIONS = _public_functions()


def _params(func) -> list[inspect.Parameter]:
    return list(inspect.signature(func).parameters.values())


def _data_args(name: str, params: list[inspect.Parameter]) -> tuple[str, ...]:
    """The names the function may take positionally."""
    if name in NOT_ANNDATA_FIRST:
        first = NOT_ANNDATA_FIRST[name][0]
    else:
        first = tuple(p.name for p in params if p.name.startswith("adata"))
    return first + EXTRA_DATA_ARGS.get(name, ((), ""))[0]


def _union_parts(annotation) -> set[str]:
    """The top-level members of a ``X | Y`` (or ``Optional``/``Union``) annotation, as text."""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = {p.strip().strip("'\"") for p in parts}
    for p in list(out):
        m = re.fullmatch(r"(?:typing\.)?Optional\[(.*)\]", p)
        if m:
            out |= {m.group(1).strip(), "None"}
    return out


def _documented(func) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpydoc: unknown sections such as "Source"
        doc = FunctionDoc(func)
    names = []
    for p in doc["Parameters"]:
        names += [n.strip() for n in p.name.split(",") if n.strip()]
    return names


# ----------------------------------------------------------------------------- the checks
def check_first_param_adata(name, func):
    params = _params(func)
    assert params, f"{name} takes no arguments"
    if name in NOT_ANNDATA_FIRST:
        want = NOT_ANNDATA_FIRST[name][0][0]
        assert params[0].name == want, f"{name}: first parameter {params[0].name!r}, not {want!r}"
    else:
        assert params[0].name.startswith("adata"), (
            f"{name}: the first parameter is {params[0].name!r}; name it adata (or list the "
            "function in NOT_ANNDATA_FIRST with the reason)"
        )


def check_keyword_only(name, func):
    params = _params(func)
    data = _data_args(name, params)
    positional = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    extra = [p for p in positional if p not in data]
    assert not extra, f"{name}: {extra} should be keyword-only (after the data arguments {data})"
    assert positional == [p.name for p in params[: len(positional)]]


def check_max_params(name, func):
    n = len(_params(func))
    assert n <= MAX_PARAMS, f"{name} takes {n} parameters (at most {MAX_PARAMS})"


def check_copy(name, func):
    sig = inspect.signature(func)
    if "copy" not in sig.parameters:
        return
    p = sig.parameters["copy"]
    assert p.kind is p.KEYWORD_ONLY, f"{name}: copy must be keyword-only"
    assert p.default is False, f"{name}: copy defaults to {p.default!r}, not False"
    annotation = sig.return_annotation
    assert annotation is not inspect.Signature.empty, f"{name} has no return annotation"
    parts = _union_parts(annotation)
    if name in RETURNS_TABLE:  # the table, or (adata copy, table) with copy=True
        assert any(re.match(r"tuple\[(\w+\.)*AnnData,", p) for p in parts), (
            f"{name} has copy= but its annotation {annotation!r} has no (AnnData, table) tuple"
        )
        return
    has_anndata = any(re.fullmatch(r"(\w+\.)*AnnData", p) for p in parts)
    assert has_anndata and "None" in parts, (
        f"{name} has copy= but returns {annotation!r}; annotate AnnData | None"
    )


def check_documented(name, func):
    sig_names = []
    for p in _params(func):
        sig_names.append(f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name)
    documented = _documented(func)
    missing = [n for n in sig_names if n not in documented]
    stale = [n for n in documented if n not in sig_names]
    assert not missing, f"{name}: parameters not in the Parameters section: {missing}"
    assert not stale, f"{name}: documented but not in the signature: {stale}"


def check_random_state(name, func):
    params = inspect.signature(func).parameters
    if "rng" in params:
        assert "random_state" in params, (
            f"{name} takes rng= but not its alias random_state= (@accepts_random_state)"
        )


CHECKS = {
    "first_param_adata": check_first_param_adata,
    "keyword_only": check_keyword_only,
    "max_params": check_max_params,
    "copy": check_copy,
    "documented": check_documented,
    "random_state": check_random_state,
}


def _cases():
    for fname in FUNCTIONS:
        for check in CHECKS:
            marks = []
            if (fname, check) in XFAIL:
                marks = [pytest.mark.xfail(strict=True, reason=XFAIL[fname, check])]
            yield pytest.param(fname, check, marks=marks, id=f"{fname}-{check}")


@pytest.mark.parametrize(("fname", "check"), list(_cases()))
def test_function_headers(fname, check):
    CHECKS[check](fname, FUNCTIONS[fname])


def test_the_lists_name_existing_functions():
    """The allow-lists and XFAIL name public functions and checks that exist."""
    for name in [*NOT_ANNDATA_FIRST, *EXTRA_DATA_ARGS, *RETURNS_TABLE, *(f for f, _ in XFAIL)]:
        assert name in FUNCTIONS, f"{name} is listed here but is not a public function"
    assert {c for _, c in XFAIL} <= set(CHECKS)
    for name, (args, _) in {**NOT_ANNDATA_FIRST, **EXTRA_DATA_ARGS}.items():
        have = list(inspect.signature(FUNCTIONS[name]).parameters)
        assert set(args) <= set(have), f"{name}: {args} not all in its signature {have}"


def test_every_module_lists_its_functions():
    """``__all__`` of pp, tl, pl and metrics names what they export and nothing else."""
    for prefix, module in MODULES.items():
        assert hasattr(module, "__all__"), f"sct.{prefix} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"sct.{prefix}.__all__ names missing {name!r}"


# ----------------------------------------------------------------------------- the package
def test_version_comes_from_the_installed_metadata():
    assert sct.__version__ == importlib.metadata.version("sctorch")
    assert sct.__version__ != "0.0.0+unknown"


def test_py_typed_is_shipped():
    assert (Path(sct.__file__).parent / "py.typed").is_file()


# ----------------------------------------------------------------------------- settings classes
CONFIGS = {
    "GenoMapConfig": "genomap",
    "TCERConfig": "tcer",
    "StImputeConfig": "stimpute",
    "ScRobustConfig": "scrobust",
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_method_has_one_settings_class_with_named_presets(name):
    """One config per method: a MethodConfig, exported from sct.tl and its method package,
    presets as named instances that validate (``"default"`` and, for the three methods of
    the papers, ``"paper"``)."""
    import importlib
    import inspect as _inspect

    from sctorch._config import MethodConfig

    cls = getattr(sct.tl, name)
    assert name in sct.tl.__all__
    assert importlib.import_module(f"sctorch.{CONFIGS[name]}").__dict__.get(name) is cls
    assert _inspect.isclass(cls) and issubclass(cls, MethodConfig)
    assert "default" in cls.PRESETS
    if name != "GenoMapConfig":
        assert "paper" in cls.PRESETS
    for preset in cls.PRESETS.values():
        assert type(preset) is cls
        preset.validate()
