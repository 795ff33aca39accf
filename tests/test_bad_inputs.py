"""Bad-input matrix: every public function × every kind of bad input (issue 17).

Each cell of the matrix either raises one documented error type whose message says what
was found, or is handled correctly (the same result as the clean input); in both cases
the input AnnData is left exactly as it was (a deep comparison of every field).
``python tests/test_bad_inputs.py`` prints the matrix.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import sctorch as sct

# ----------------------------------------------------------------------------- data


def _counts(n_cells=48, n_genes=36, seed=0):
    """Real counts: the most-detected genes of bundled ifnb PBMC cells, with cell types."""
    a = sct.datasets.ifnb_pbmc(bundled=True)
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(a.n_obs, n_cells, replace=False))
    a = a[cells].copy()
    a = a[:, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:n_genes]].copy()
    X = a.X.toarray().astype(np.float32)
    X[:, 0] += 1  # no empty cell
    a.X = sparse.csr_matrix(X)
    a.obs = a.obs[["cell_type"]].copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(str).astype("category")
    a.var = pd.DataFrame(index=a.var_names)
    a.uns = {}
    return a


_CACHE: dict = {}


def _model():
    if "model" not in _CACHE:
        _CACHE["model"] = sct.tl.scrobust_pretrain(
            _counts(), d_model=16, n_heads=2, epochs=1, n_genes_per_view=8, rng=0, progress=False
        )
    return _CACHE["model"]


def _reference():
    if "ref" not in _CACHE:
        ref = _counts(n_cells=64, n_genes=60, seed=1)
        _CACHE["ref"] = ref
    return _CACHE["ref"].copy()


def _with_genomap(a):
    sct.tl.genomap(a, rng=0, progress=False)
    return a


# ----------------------------------------------------------------------------- functions
# name -> (run(adata) -> result to compare, kinds of input it reads, input scale)
def _run_simulate(a):
    out = sct.pp.simulate_efficiency_loss(a, efficiency_shape=10, rng=0, copy=True)
    return out.layers["observed"]


def _run_select(a):
    out = sct.pp.select_reference(a, min_library_quantile=0.0, min_detection=0.0)
    return out.X


def _run_genomap(a):
    out = sct.tl.genomap(a, rng=0, progress=False, copy=True)
    return np.stack([out.var["genomap_row"], out.var["genomap_col"]])


def _run_tcer(a):
    out = sct.tl.tcer_impute(a, n_features=2, epochs=1, rng=0, progress=False, copy=True)
    return out.layers["tcer"]


def _run_stimpute(a):
    ref = _reference()
    genes = [g for g in ref.var_names if g not in set(a.var_names)][:3]
    out = sct.tl.stimpute(
        a,
        ref,
        genes=genes,
        n_neighbors=5,
        epochs=1,
        ae_epochs=1,
        reliability_folds=0,
        rng=0,
        progress=False,
        return_adata=True,
    )
    return out.X


def _run_stimpute_cv(a):
    b = a.copy()  # it writes its layer in place
    sct.tl.stimpute_cv(
        b, _reference(), n_folds=2, n_neighbors=5, epochs=1, ae_epochs=1, rng=0, progress=False
    )
    return b.layers["stimpute_cv"]


def _run_gene_graph(a):
    return sct.tl.stimpute_gene_graph(list(a.var_names), expression=a.X, n_neighbors=2)


def _run_pretrain(a):
    m = sct.tl.scrobust_pretrain(
        a, d_model=16, n_heads=2, epochs=1, n_genes_per_view=8, rng=0, progress=False
    )
    return m.history["pretrain_loss"]


def _run_embed(a):
    out = sct.tl.scrobust_embed(a, _model(), n_genes=16, rng=0, progress=False, copy=True)
    return out.obsm["X_scrobust"]


def _run_annotate(a):
    out = sct.tl.scrobust_annotate(
        a,
        _reference(),
        labels_key="cell_type",
        model=_model(),
        n_genes=16,
        epochs=1,
        rng=0,
        progress=False,
        copy=True,
    )
    return out.obs["scrobust_confidence"].to_numpy()


def _run_pathways(a):
    genes = list(_reference().var_names)
    out = sct.tl.scrobust_pathway_scores(a, {"A": genes[:6], "B": genes[6:14]}, _model(), copy=True)
    return np.asarray(out.obsm["X_scrobust_pathways"])


def _run_markers(a):
    out = sct.tl.scrobust_marker_genes(
        a, "cell_type", _model(), n_tokens=16, progress=False, copy=True
    )
    return np.asarray(out.uns["scrobust_markers"]["scores"].tolist(), dtype=float)


FUNCTIONS = {
    "pp.simulate_efficiency_loss": (_run_simulate, "counts"),
    "pp.select_reference": (_run_select, "counts"),
    "tl.genomap": (_run_genomap, "auto"),
    "tl.tcer_impute": (_run_tcer, "counts"),
    "tl.stimpute": (_run_stimpute, "auto"),
    "tl.stimpute_cv": (_run_stimpute_cv, "auto"),
    "tl.stimpute_gene_graph": (_run_gene_graph, "auto"),
    "tl.scrobust_pretrain": (_run_pretrain, "counts"),
    "tl.scrobust_embed": (_run_embed, "counts"),
    "tl.scrobust_annotate": (_run_annotate, "counts"),
    "tl.scrobust_pathway_scores": (_run_pathways, "counts"),
    "tl.scrobust_marker_genes": (_run_markers, "counts"),
}


# ----------------------------------------------------------------------------- bad inputs
def _set(a, i, j, value):
    X = a.X.toarray().astype(np.float32)
    X[i, j] = value
    a.X = sparse.csr_matrix(X)
    return a


def _lognorm(a):
    X = a.X.toarray()
    a.X = sparse.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32))
    return a


def _zero_cell(a):
    X = a.X.toarray()
    X[3] = 0
    a.X = sparse.csr_matrix(X)
    return a


def _zero_gene(a):
    X = a.X.toarray()
    X[:, 5] = 0
    a.X = sparse.csr_matrix(X)
    return a


def _dup(a):
    names = list(a.var_names)
    names[4] = names[3]
    a.var_names = names
    return a


def _ulp_noise(a):
    X = a.X.toarray().astype(np.float32)
    big = X > 16  # where one float32 step exceeds the former absolute tolerance of 1e-6
    X[big] = np.nextafter(X[big], np.float32(np.inf))
    a.X = sparse.csr_matrix(X)
    return a


def _case(a):
    a.var_names = [g.lower() for g in a.var_names]
    return a


# kind -> (make(adata) -> adata, expected)
# expected: "same" (handled: same result as the clean input), "runs" (handled, result may
# differ), or (error type, regex the message must match)
KINDS = {
    "nan": (lambda a: _set(a, 1, 2, np.nan), (ValueError, r"non-finite|NaN")),
    "inf": (lambda a: _set(a, 1, 2, np.inf), (ValueError, r"non-finite|inf")),
    "negative": (lambda a: _set(a, 1, 2, -1.0), (ValueError, r"negative")),
    "log_as_counts": (_lognorm, (ValueError, r"non-integer|log")),
    "zero_cell": (_zero_cell, (ValueError, r"zero|no non-zero|empty")),
    "zero_gene": (_zero_gene, "runs"),
    "duplicate_names": (_dup, (ValueError, r"duplicate|make them unique")),
    "no_cells": (lambda a: a[:0].copy(), (ValueError, r"0 cell|empty|got 0")),
    "one_cell": (lambda a: a[:1].copy(), (ValueError, r"at least 2|1 cell|got 1")),
    "no_genes": (lambda a: a[:, :0].copy(), (ValueError, r"0 genes|empty|got 0")),
    "csc": (lambda a: setattr(a, "X", sparse.csc_matrix(a.X)) or a, "same"),
    "dense": (lambda a: setattr(a, "X", a.X.toarray()) or a, "same"),
    "int64": (lambda a: setattr(a, "X", sparse.csr_matrix(a.X, dtype=np.int64)) or a, "same"),
    "int8": (
        lambda a: setattr(a, "X", sparse.csr_matrix(a.X.minimum(100), dtype=np.int8)) or a,
        "runs",
    ),
    "view": (lambda a: a[:, :], "same"),
    # integer counts as float32, one unit in the last place above (a round trip through
    # other tools): still counts (issue 24)
    "float32_ulp": (_ulp_noise, "same"),
    "missing_layer": (None, (KeyError, r"not found|nope")),
}

# where the generic expectation does not apply, and why
OVERRIDES = {
    # continuous (log-normalised or imaging) values are valid input to these
    ("tl.genomap", "log_as_counts"): "runs",
    ("tl.stimpute", "log_as_counts"): "runs",
    ("tl.stimpute_cv", "log_as_counts"): "runs",
    ("tl.stimpute_gene_graph", "log_as_counts"): "runs",
    # an all-zero cell is a valid row of these (select_reference filters it out)
    ("pp.select_reference", "zero_cell"): "runs",
    ("tl.genomap", "zero_cell"): "runs",
    ("tl.stimpute", "zero_cell"): "runs",
    ("tl.stimpute_cv", "zero_cell"): "runs",
    ("tl.stimpute_gene_graph", "zero_cell"): "runs",
    # a gene's correlation is undefined when it is constant across cells (TCER builds a
    # GenoMap when the data have none)
    ("tl.genomap", "zero_gene"): (ValueError, r"constant"),
    ("tl.tcer_impute", "zero_gene"): (ValueError, r"constant"),
    # cosine similarity is defined for signed (e.g. scaled) expression
    ("tl.stimpute_gene_graph", "negative"): "runs",
    # one cell is a valid (if small) input of these
    ("pp.simulate_efficiency_loss", "one_cell"): "runs",
    ("pp.select_reference", "one_cell"): "runs",
    ("tl.scrobust_embed", "one_cell"): "runs",
    ("tl.scrobust_annotate", "one_cell"): "runs",
    ("tl.scrobust_pathway_scores", "one_cell"): "runs",
    ("tl.stimpute", "one_cell"): "runs",
    # the gene graph takes a plain matrix and a gene list: no layer, no AnnData view
    ("tl.stimpute_gene_graph", "missing_layer"): "skip",
    ("tl.stimpute_gene_graph", "view"): "skip",
}


def _expected(func, kind):
    return OVERRIDES.get((func, kind), KINDS[kind][1])


# ----------------------------------------------------------------------------- the matrix
def _clean_result(func):
    key = ("clean", func)
    if key not in _CACHE:
        run, _ = FUNCTIONS[func]
        _CACHE[key] = run(_counts())
    return _CACHE[key]


def run_case(func, kind):
    """Run one cell of the matrix; returns 'error', 'handled' or 'skip' (asserts inside)."""
    expected = _expected(func, kind)
    if expected == "skip":
        return "skip"
    run, _ = FUNCTIONS[func]
    a = _counts()
    make = KINDS[kind][0]
    if kind == "missing_layer":

        def run(x, _run=run):  # the same function, reading a layer that does not exist
            return _call_with_layer(func, x, "nope")
    else:
        a = make(a)
    parent = None
    if kind == "view":
        parent, a = a, a
        parent_snap = snapshot(_counts())
    before = snapshot(a)
    if isinstance(expected, tuple):
        err, match = expected
        with pytest.raises(err, match=match):
            run(a)
        outcome = "error"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = run(a)
        if expected == "same":
            ref = _clean_result(func)
            np.testing.assert_allclose(
                _as_array(got),
                _as_array(ref),
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{func} on {kind} input differs from clean",
            )
        outcome = "handled"
    if parent is not None:
        assert_unchanged(_counts(), parent_snap, f"{func} ({kind}): the view's parent")
    assert_unchanged(a, before, f"{func} ({kind}): adata")
    return outcome


def _as_array(x):
    x = x.toarray() if sparse.issparse(x) else x
    return np.asarray(x, dtype=np.float64)


def _call_with_layer(func, a, layer):
    ref = _reference()
    calls = {
        "pp.simulate_efficiency_loss": lambda: sct.pp.simulate_efficiency_loss(
            a, layer=layer, rng=0, copy=True
        ),
        "pp.select_reference": lambda: sct.pp.select_reference(a, layer=layer),
        "tl.genomap": lambda: sct.tl.genomap(a, layer=layer, progress=False, copy=True),
        "tl.tcer_impute": lambda: sct.tl.tcer_impute(
            a, layer=layer, epochs=1, n_features=2, progress=False, copy=True
        ),
        "tl.stimpute": lambda: sct.tl.stimpute(a, ref, layer=layer, progress=False),
        "tl.stimpute_cv": lambda: sct.tl.stimpute_cv(a, ref, layer=layer, progress=False),
        "tl.scrobust_pretrain": lambda: sct.tl.scrobust_pretrain(
            a, layer=layer, epochs=1, progress=False
        ),
        "tl.scrobust_embed": lambda: sct.tl.scrobust_embed(
            a, _model(), layer=layer, progress=False, copy=True
        ),
        "tl.scrobust_annotate": lambda: sct.tl.scrobust_annotate(
            a,
            ref,
            labels_key="cell_type",
            model=_model(),
            layer=layer,
            epochs=1,
            progress=False,
            copy=True,
        ),
        "tl.scrobust_pathway_scores": lambda: sct.tl.scrobust_pathway_scores(
            a, {"A": list(a.var_names[:5])}, _model(), layer=layer, copy=True
        ),
        "tl.scrobust_marker_genes": lambda: sct.tl.scrobust_marker_genes(
            a, "cell_type", _model(), layer=layer, progress=False, copy=True
        ),
    }
    return calls[func]()


CASES = [(f, k) for f in FUNCTIONS for k in KINDS]


@pytest.mark.parametrize(("func", "kind"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_bad_input(func, kind):
    run_case(func, kind)


def test_integer_tolerance_is_relative_to_float_precision():
    from sctorch._utils import check_counts, resolve_input_scale

    x = np.array([1, 23, 1000, 2**20], np.float32)
    for direction in (np.inf, -np.inf):
        noisy = np.nextafter(x, np.float32(direction))
        check_counts(noisy)  # one float32 step from an integer: counts
        assert resolve_input_scale(sparse.csr_matrix(noisy[None])) == "counts"
    check_counts(np.nextafter(np.float64(5e6), 0.0)[None])
    off = np.float32(23.0001)
    with pytest.raises(ValueError, match=re.escape(repr(float(off)))):
        check_counts(np.array([1, off], np.float32))
    with pytest.raises(ValueError, match=r"e\.g\. 0\.5\b"):
        check_counts(np.array([0.5, 2.0]))
    with pytest.raises(ValueError, match=r"1e-09"):  # float64 is held to float64 precision
        check_counts(np.array([1 + 1e-9, 2.0]))


def test_counts_declared_log1p_are_refused():
    a = _counts()
    before = snapshot(a)
    with pytest.raises(ValueError, match="raw counts"):
        sct.tl.scrobust_embed(a, _model(), input_scale="log1p", progress=False)
    assert_unchanged(a, before)


def test_name_case_mismatch_is_reported():
    a = _counts()
    ref = _reference()
    low = a.copy()
    low.var_names = [g.lower() for g in a.var_names]
    with pytest.raises(ValueError, match="case"):
        sct.tl.stimpute(low, ref, progress=False)


def test_key_collision_is_reported():
    a = _counts()
    a.obsm["stimpute"] = np.zeros((a.n_obs, 2))
    ref = _reference()
    genes = [g for g in ref.var_names if g not in set(a.var_names)][:2]
    with pytest.warns(UserWarning, match="stimpute"):
        sct.tl.stimpute(
            a,
            ref,
            genes=genes,
            n_neighbors=5,
            epochs=1,
            ae_epochs=1,
            reliability_folds=0,
            progress=False,
        )


def _small_intestine():
    a = sct.datasets.intestine_moor2018(bundled=True)
    a = a[:80, np.argsort(-a.X.getnnz(axis=0), kind="stable")[:25]].copy()
    return a[np.asarray(a.X.sum(axis=1)).ravel() > 0].copy()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lr": 0}, "lr must be a positive"),
        ({"n_features": 0}, "n_features"),
        ({"lr_step": 0}, "lr_step"),
    ],
)
def test_tcer_zero_settings_are_refused_not_replaced(kw, match):
    a = _small_intestine()
    before = snapshot(a)
    with pytest.raises(ValueError, match=match):
        sct.tl.tcer_impute(a, progress=False, **kw)
    assert_unchanged(a, before)


def test_nan_is_refused_by_genomap_images_and_plot():
    a = _small_intestine()
    sct.tl.genomap(a, rng=0, progress=False)
    X = a.X.toarray().astype(np.float32)
    X[0, 0] = np.nan
    a.layers["bad"] = X
    before = snapshot(a)
    with pytest.raises(ValueError, match="non-finite"):
        sct.tl.genomap_images(a, layer="bad")
    with pytest.raises(ValueError, match="non-finite"):
        sct.pl.genomap(a, layer="bad")
    assert_unchanged(a, before)


def test_progress_false_silences_the_genomap_bar_inside_tcer(capsys):
    sct.tl.tcer_impute(_small_intestine(), n_features=2, epochs=1, progress=False)
    assert "genomap" not in capsys.readouterr().err


def test_cli_refuses_a_missing_model_folder_before_any_work(tmp_path):
    from sctorch.cli import main

    src = tmp_path / "in.h5ad"
    _small_intestine().write_h5ad(src)
    out = tmp_path / "out.h5ad"
    code = main(
        ["tcer", str(src), str(out), "--model-out", str(tmp_path / "no" / "m.st"), "--quiet"]
    )
    assert code == 1 and not out.exists()


if __name__ == "__main__":  # pragma: no cover - prints the matrix
    rows = []
    for f in FUNCTIONS:
        row = {}
        for k in KINDS:
            try:
                row[k] = run_case(f, k)
            except BaseException as err:
                row[k] = f"FAIL {type(err).__name__}: {str(err)[:80]}"
        rows.append(pd.Series(row, name=f))
    table = pd.DataFrame(rows)
    print(table.to_string())
    counts = table.stack().map(lambda s: s.split()[0]).value_counts()
    print(counts.to_string())


# ----------------------------------------------------------------------------- model files
def _fitted(kind):
    """A small fitted model of each method (cached)."""
    key = ("fitted", kind)
    if key in _CACHE:
        return _CACHE[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "scrobust":
            m = sct.tl.scrobust_annotate(
                _counts(),
                _reference(),
                labels_key="cell_type",
                model=_model(),
                epochs=1,
                rng=0,
                progress=False,
                return_model=True,
            )
        elif kind == "stimpute":
            a, ref = _counts(), _reference()
            genes = [g for g in ref.var_names if g not in set(a.var_names)][:4]
            m = sct.tl.stimpute(
                a,
                ref,
                genes=genes,
                n_neighbors=5,
                reliability_folds=0,
                rng=0,
                progress=False,
                return_model=True,
            )
        else:
            m = sct.tl.tcer_impute(
                _small_intestine(), n_features=2, epochs=1, rng=0, progress=False, return_model=True
            )
    _CACHE[key] = m
    return m


def _header(path):
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return {
            k: json.loads(v) if k in ("config", "genes", "extra") else v
            for k, v in fh.metadata().items()
        }


@pytest.mark.parametrize(
    ("kind", "field", "edit"),
    [
        ("scrobust", "extra", lambda h: {**h["extra"], "classes": h["extra"]["classes"][::-1]}),
        ("stimpute", "genes", lambda h: h["genes"][::-1]),
        ("stimpute", "extra", lambda h: {**h["extra"], "targets": h["extra"]["targets"][::-1]}),
        ("tcer", "genes", lambda h: h["genes"][::-1]),
    ],
    ids=["scrobust-classes", "stimpute-genes", "stimpute-targets", "tcer-genes"],
)
def test_an_edited_model_header_is_refused(tmp_path, kind, field, edit):
    from test_models import _rewrite

    from sctorch.models import ModelFileError

    path = tmp_path / "m.safetensors"
    _fitted(kind).save(path)
    bad = _rewrite(path, tmp_path / "edited.safetensors", **{field: edit(_header(path))})
    with pytest.raises(ModelFileError, match=rf"edited\.safetensors.*{field!r}"):
        sct.models.load(bad)
    assert type(sct.models.load(path)) is type(_fitted(kind))


def test_forged_header_values_are_checked_before_anything_is_built(tmp_path):
    import time

    from test_models import _rewrite

    from sctorch.models import ModelFileError

    path = tmp_path / "m.safetensors"
    _model().save(path)
    cfg = _header(path)["config"]
    bad = _rewrite(
        path, tmp_path / "layers.safetensors", forge=True, config={**cfg, "n_layers": 100_000}
    )
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"layers\.safetensors.*'config'.*do not fit"):
        sct.models.load(bad)
    assert time.perf_counter() - t0 < 30  # was 158 s and 4.9 GB before failing
    bad = _rewrite(path, tmp_path / "cls.safetensors", forge=True, model_class="TCERModle")
    with pytest.raises(ModelFileError, match=r"cls\.safetensors.*'model_class'.*TCERModle"):
        sct.models.load(bad)
    tcer = tmp_path / "t.safetensors"
    _fitted("tcer").save(tcer)
    cfg = _header(tcer)["config"]
    bad = _rewrite(
        tcer,
        tmp_path / "beta.safetensors",
        forge=True,
        config={**cfg, "beta": float("nan"), "n_neighbors": -5},
    )
    with pytest.raises(ModelFileError, match=r"beta\.safetensors.*'config'.*(beta|n_neighbors)"):
        sct.models.load(bad)


def test_forged_tcer_fitted_values_in_extra_are_checked(tmp_path):
    from test_models import _rewrite

    from sctorch.models import ModelFileError

    tcer = tmp_path / "t.safetensors"
    _fitted("tcer").save(tcer)
    extra = _header(tcer)["extra"]
    for field, value in (("beta", -1.0), ("n_neighbors", 2.5), ("scale", 0.0), ("shape", [3])):
        bad = _rewrite(tcer, tmp_path / "x.safetensors", forge=True, extra={**extra, field: value})
        with pytest.raises(ModelFileError, match=rf"x\.safetensors.*extra '{field}'"):
            sct.models.load(bad)
    loaded = sct.models.load(tcer)
    np.testing.assert_array_equal(loaded.beta, _fitted("tcer").beta)
    # the per-gene beta (a tensor of the file) must hold one value >= 0 per gene
    for beta in (loaded.beta[:3], -loaded.beta - 1.0):
        loaded.beta = beta
        with pytest.raises(ValueError, match="per-gene beta"):
            loaded._check_integrity()


# ----------------------------------------------------------------------------- leaked messages
def test_a_negative_seed_is_refused_in_our_words():
    from sctorch._utils import get_rng, seed_int

    for f in (get_rng, seed_int):
        with pytest.raises(ValueError, match=r"rng.*non-negative.*-1"):
            f(-1)
    with pytest.raises(TypeError, match=r"rng must be an int.*str"):
        get_rng("0")
    a = _small_intestine()
    before = snapshot(a)
    with pytest.raises(ValueError, match=r"rng.*-1"):
        sct.tl.genomap(a, rng=-1, progress=False)
    assert_unchanged(a, before, "genomap(rng=-1)")


def test_data_arguments_of_the_wrong_type_are_named():
    from sctorch._utils import check_anndata

    df = _counts().to_df()
    with pytest.raises(
        TypeError, match=r"adata_sp must be an AnnData.*DataFrame.*anndata\.AnnData"
    ):
        check_anndata(df, "adata_sp")
    with pytest.raises(ValueError, match=r"adata_ref has 0 cells"):
        check_anndata(_counts()[:0].copy(), "adata_ref", min_cells=1)
    check_anndata(None, "adata_ref", optional=True)
    with pytest.raises(TypeError, match=r"adata_sp must be an AnnData"):
        sct.tl.stimpute(df, _reference(), progress=False)


def test_scrobust_annotate_with_an_empty_reference_says_so():
    a = _counts()
    before = snapshot(a)
    with pytest.raises(ValueError, match=r"adata_ref has 0 cells"):
        sct.tl.scrobust_annotate(
            a, _reference()[:0].copy(), labels_key="cell_type", model=_model(), progress=False
        )
    assert_unchanged(a, before, "scrobust_annotate(0-cell reference)")


def test_scrobust_pathway_scores_without_a_model_says_so():
    from sctorch._utils import check_model

    with pytest.raises(TypeError, match=r"model must be a ScRobustModel.*None.*scrobust_pretrain"):
        check_model(None, "ScRobustModel", hint="train one with sct.tl.scrobust_pretrain")
    a = _counts()
    with pytest.raises(TypeError, match=r"model must be a ScRobustModel.*None"):
        sct.tl.scrobust_pathway_scores(a, {"A": list(a.var_names[:5])}, None)


def test_read_gmt_on_a_binary_file_says_it_is_not_gmt(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary")
    with pytest.raises(ValueError, match=r"sets\.gmt.*not a text GMT file.*byte 0x89"):
        sct.datasets.read_gmt(path)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this would create a file
        return (open, (self.marker, "w"))


def test_a_torch_pickle_given_as_esm_checkpoint_is_refused_without_advice_to_run_it(tmp_path):
    import torch

    pytest.importorskip("esm")
    marker = tmp_path / "pwned"
    path = tmp_path / "esm2_evil.pt"
    torch.save({"model": _Payload(marker), "cfg": {}}, path)
    with pytest.raises(ValueError, match=r"esm2_evil\.pt.*not a fair-esm checkpoint") as err:
        sct.pp.esm_gene_embeddings(["Plp1"], {"Plp1": "MGLLECCARC"}, model=path, progress=False)
    assert "weights_only=False" not in str(err.value)
    assert err.value.__cause__ is None or "weights_only=False" not in str(err.value.__cause__)
    assert not marker.exists()


# ----------------------------------------------------------------------------- bounded work
def _long_runs():
    a, ref = _counts(), _reference()
    genes = [g for g in ref.var_names if g not in set(a.var_names)][:3]
    return {
        "scrobust_pretrain": lambda: sct.tl.scrobust_pretrain(
            a, d_model=16, n_heads=2, epochs=10**9, n_genes_per_view=8, progress=False
        ),
        "scrobust_annotate": lambda: sct.tl.scrobust_annotate(
            a, ref, labels_key="cell_type", model=_model(), epochs=10**9, progress=False
        ),
        "stimpute_gnn": lambda: sct.tl.stimpute(
            a,
            ref,
            genes=genes,
            method="gnn",
            n_neighbors=5,
            epochs=10**9,
            ae_epochs=1,
            reliability_folds=0,
            progress=False,
        ),
        "tcer_no_patience": lambda: sct.tl.tcer_impute(
            _small_intestine(), n_features=2, epochs=10**9, patience=None, progress=False
        ),
    }, a


@pytest.mark.parametrize(
    "case", ["scrobust_pretrain", "scrobust_annotate", "stimpute_gnn", "tcer_no_patience"]
)
def test_an_unbounded_run_warns_with_its_estimate(monkeypatch, case):
    from sctorch import _utils
    from sctorch.models import _fit

    runs, a = _long_runs()
    before = snapshot(a)
    monkeypatch.setattr(_utils, "LONG_RUN_SECONDS", 3600.0)
    epoch, seen = _fit._Stepper.epoch, []

    def guarded(self, batches):  # without the warning the run must not go on for ever
        seen.append(1)
        if len(seen) > 3:
            raise AssertionError("3 epochs of an epochs=10**9 run passed without a warning")
        return epoch(self, batches)

    monkeypatch.setattr(_fit._Stepper, "epoch", guarded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the warning, turned into an error, ends the run after its first epoch
        warnings.filterwarnings("error", message=r".*estimated", category=UserWarning)
        with pytest.raises(UserWarning, match=r"1,000,000,000 epochs.*estimated .* to finish"):
            runs[case]()
    assert_unchanged(a, before, case)


def test_log_data_in_x_with_counts_in_raw_gets_a_raw_hint():
    from sctorch._utils import check_counts

    a = _lognorm(_counts())
    with pytest.raises(ValueError, match=r"adata\.raw"):
        check_counts(a.X)


def test_a_network_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    import time

    from sctorch import _utils

    monkeypatch.setattr(_utils, "available_memory", lambda: 2**30)
    a = _counts()
    before = snapshot(a)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"ScRobustModel of [0-9,]+ parameters.*GiB"):
        sct.tl.scrobust_pretrain(a, d_model=2**14, n_heads=2, epochs=1, progress=False)
    assert time.perf_counter() - t0 < 30  # was a torch allocation error after 41 s
    assert_unchanged(a, before, "scrobust_pretrain(d_model=2**14)")


def test_a_setting_the_function_must_change_is_warned_and_recorded():
    a = _small_intestine()
    with pytest.warns(UserWarning, match=r"n_neighbors=1000000.*uses \d+"):
        sct.tl.tcer_impute(a, n_features=2, epochs=1, n_neighbors=10**6, progress=False)
    params = a.uns["tcer"]["params"]
    assert int(params["n_neighbors_fitted"]) == a.n_obs - 1


def test_clamp_setting():
    from sctorch._utils import clamp_setting

    assert clamp_setting("k", 5, 10, why="x") == 5
    with pytest.warns(UserWarning, match=r"k=50 .*uses 10 .*only 11 cells"):
        assert clamp_setting("k", 50, 10, why="there are only 11 cells") == 10


def test_a_reference_class_of_one_cell_warns():
    ref = _reference()
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    labels[0] = "singleton"
    ref.obs["cell_type"] = pd.Categorical(labels)
    with pytest.warns(UserWarning, match=r"class\(es\) with fewer than 2 cells.*'singleton': 1"):
        sct.tl.scrobust_annotate(
            _counts(),
            ref,
            labels_key="cell_type",
            model=_model(),
            epochs=1,
            progress=False,
            copy=True,
        )


def test_a_genomap_grid_that_cannot_fit_is_refused_with_its_size():
    a = _small_intestine()
    before = snapshot(a)
    with pytest.raises(MemoryError, match=r"20000 × 20000 grid.*needs about [0-9.,]+ GiB"):
        sct.tl.genomap(a, shape=(20000, 20000), progress=False)
    assert_unchanged(a, before, "genomap(shape=(20000, 20000))")
