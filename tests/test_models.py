"""The shared model lifecycle: one save format, clear errors for foreign files, fit()."""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest
import torch

from sctorch._utils import seeded
from sctorch.models import BaseModel, ModelFileError, fit, load


@dataclasses.dataclass
class _Cfg:
    d: int = 3
    ratio: tuple[float, float] = (0.1, 0.2)


class _Toy(BaseModel):
    config_cls = _Cfg

    @classmethod
    def _build_module(cls, config, extra):
        return torch.nn.Linear(config.d, 1)

    def _extra_state(self):
        return {"note": "x"}, {"pos": self.pos}

    def _set_extra_state(self, extra, arrays):
        self.pos = arrays["pos"]

    def _check_integrity(self):
        if len(np.unique(self.pos)) != len(self.pos):
            raise ValueError("two genes share one position")


def _toy(seed=0):
    with seeded(seed):
        m = _Toy(torch.nn.Linear(3, 1), config=_Cfg(), genes=["a", "b", "c"])
    m.pos = np.arange(3)
    return m


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this object would create a file
        return (open, (str(self.path), "w"))


def test_save_load_round_trip_and_dispatch(tmp_path):
    m = _toy()
    m.history = {"train_loss": [1.0, 0.5]}
    path = tmp_path / "toy.safetensors"
    m.save(path)
    for loaded in (_Toy.load(path), load(path)):
        assert type(loaded) is _Toy
        assert loaded.config == _Cfg() and loaded.config.ratio == (0.1, 0.2)
        assert loaded.genes == ["a", "b", "c"] and loaded.history == m.history
        np.testing.assert_array_equal(loaded.pos, np.arange(3))
        x = torch.randn(4, 3)
        torch.testing.assert_close(loaded.module(x), m.module(x))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        m.save(path)
    m.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.save(tmp_path / "missing" / "m.safetensors")


@pytest.mark.parametrize("content", ["pickle", "text", "empty", "random", "big_header"])
def test_foreign_files_are_refused_without_running_code(tmp_path, content):
    path = tmp_path / "model.safetensors"
    marker = tmp_path / "pwned"
    data = {
        "pickle": pickle.dumps(_RunsCode(marker)),
        "text": b'{"d_model": 3}',
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "big_header": (2**40).to_bytes(8, "little") + b"{}",
    }[content]
    path.write_bytes(data)
    for loader in (load, _Toy.load):
        with pytest.raises(ModelFileError, match="not a sctorch model file"):
            loader(path)
    assert not marker.exists()


def test_corrupted_weights_wrong_class_and_integrity(tmp_path):
    m = _toy()
    path = tmp_path / "m.safetensors"
    m.save(path)
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load(bad)

    class _Other(_Toy):
        pass

    with pytest.raises(ModelFileError, match=r"holds a _Toy, not a _Other"):
        _Other.load(path)
    m.pos = np.array([0, 0, 1])
    m.save(path, overwrite=True)
    with pytest.raises(ModelFileError, match="share one position"):
        load(path)
    with pytest.raises(ModelFileError, match="is a folder"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.safetensors")


def test_fit_early_stopping_restores_best_weights():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    X = torch.randn(32, 2)
    y = X @ torch.tensor([1.0, -2.0])
    scores = iter([3.0, 1.0, 2.0, 2.5, 0.5])
    seen = {}

    def validate():
        s = next(scores)
        if s == 1.0:
            seen["best"] = net.weight.detach().clone()
        return s

    hist = fit(
        net,
        lambda b: ((net(X[b]).squeeze(1) - y[b]) ** 2).mean(),
        lambda e: [slice(0, 16), slice(16, 32)],
        epochs=5,
        lr=0.1,
        validate=validate,
        patience=2,
        progress=False,
    )
    assert hist["val_loss"] == [3.0, 1.0, 2.0, 2.5]  # stopped after two stale epochs
    assert len(hist["train_loss"]) == 4
    torch.testing.assert_close(net.weight, seen["best"])  # best (epoch 2) weights restored


def test_fit_mode_max_extras_and_errors():
    net = torch.nn.Linear(1, 1)
    x = torch.ones(4, 1)

    def loss_fn(b):
        loss = (net(x) ** 2).mean()
        return loss, {"acc": 0.5}

    hist = fit(
        net,
        loss_fn,
        lambda e: [0, 1],
        epochs=2,
        validate=lambda: 0.1,
        mode="max",
        prefix="pretrain",
        val_key="val_f1",
        progress=False,
    )
    assert set(hist) == {"pretrain_loss", "pretrain_acc", "val_f1"}
    assert hist["pretrain_acc"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(net, loss_fn, lambda e: [0], epochs=0, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        fit(net, lambda b: net(x).sum() * float("nan"), lambda e: [0], epochs=1, progress=False)


def test_seeded_restores_callers_generators():
    torch.manual_seed(123)
    np.random.seed(5)
    expect_t, expect_n = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(5)
    with seeded(0):
        a = torch.rand(1)
    with seeded(0):
        b = torch.rand(1)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(1), expect_t) and np.random.rand() == expect_n


class _Other(BaseModel):
    @classmethod
    def _build_module(cls, config, extra):
        return torch.nn.Linear(2, 1)


@pytest.mark.parametrize("name", ["TCERModel", "StImputeModel", "ScRobustModel"])
def test_method_models_refuse_pickles_other_classes_and_untrained_saves(tmp_path, name):
    import sctorch as sct

    klass = getattr(sct.models, name)
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"net": _RunsCode(marker)}))
    with pytest.raises(ModelFileError, match="not a sctorch model file"):
        klass.load(bad)
    assert not marker.exists()
    other = tmp_path / "other.safetensors"
    _Other(torch.nn.Linear(2, 1), genes=["a", "b"]).save(other)
    with pytest.raises(ModelFileError, match=f"holds a _Other, not a {name}"):
        klass.load(other)
    with pytest.raises(ValueError, match="has not been trained"):
        klass().save(tmp_path / "untrained.safetensors")


# ----------------------------------------------------------------------------- issue 24
def _rewrite(src, dst, *, forge=False, drop=(), **fields):
    """Copy a model file with header ``fields`` replaced (``forge``: recompute the digest)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from sctorch.models import _base

    with safe_open(str(src), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    for k, v in fields.items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    for k in drop:
        meta.pop(k)
    if forge:
        meta.update(_base._header_digests(meta, tensors))
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_an_edited_header_is_refused_naming_the_file_and_field(tmp_path):
    path = tmp_path / "m.safetensors"
    _toy().save(path)
    bad = _rewrite(path, tmp_path / "edited.safetensors", genes=["c", "b", "a"])
    with pytest.raises(ModelFileError, match=r"edited\.safetensors.*'genes'"):
        load(bad)
    bad = _rewrite(path, tmp_path / "cfg.safetensors", config={"d": 3, "ratio": [0.2, 0.2]})
    with pytest.raises(ModelFileError, match=r"cfg\.safetensors.*'config'"):
        load(bad)


def test_a_changed_model_class_is_blamed_on_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    _toy().save(path)
    bad = _rewrite(path, tmp_path / "cls.safetensors", forge=True, model_class="_Nope")
    with pytest.raises(ModelFileError, match=r"cls\.safetensors.*model_class.*'_Nope'") as err:
        load(bad)
    assert "version" not in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("history", [1.0, 2.0], r"'history'.*dict"),
        ("history", {"loss": "x"}, r"'history'.*list of numbers"),
        ("genes", ["a", "a", "c"], r"'genes'.*duplicate.*'a'"),
        ("genes", ["a", 2, "c"], r"'genes'.*str"),
        ("genes", {"a": 1}, r"'genes'.*list"),
        ("config", [3], r"'config'.*dict"),
        ("config", {"d": 3, "ratio": [0.1, 0.2], "zzz": 1}, r"'config'.*zzz"),
        ("extra", ["x"], r"'extra'.*dict"),
    ],
)
def test_header_values_are_validated_before_use(tmp_path, field, value, match):
    path = tmp_path / "m.safetensors"
    _toy().save(path)
    bad = _rewrite(path, tmp_path / "forged.safetensors", forge=True, **{field: value})
    with pytest.raises(ModelFileError, match=r"forged\.safetensors.*" + match):
        load(bad)


@dataclasses.dataclass
class _CheckedCfg:
    d: int = 3

    def validate(self):
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}.")


class _Checked(BaseModel):
    config_cls = _CheckedCfg
    built = 0

    @classmethod
    def _build_module(cls, config, extra):
        if torch.empty(0).device.type != "meta":  # count real builds, not the dry one
            cls.built += 1
        return torch.nn.Linear(config.d, 1)


def test_config_validation_and_tensor_shapes_run_before_the_module_is_built(tmp_path):
    path = tmp_path / "m.safetensors"
    _Checked(torch.nn.Linear(3, 1), config=_CheckedCfg(), genes=["a", "b", "c"]).save(path)
    _Checked.built = 0
    bad = _rewrite(path, tmp_path / "neg.safetensors", forge=True, config={"d": -5})
    with pytest.raises(ModelFileError, match=r"neg\.safetensors.*'config'.*d must be >= 1"):
        load(bad)
    assert _Checked.built == 0
    bad = _rewrite(path, tmp_path / "big.safetensors", forge=True, config={"d": 10**7})
    with pytest.raises(ModelFileError, match=r"big\.safetensors.*(size|shape)"):
        load(bad)
    assert _Checked.built == 0  # refused from a dry build on torch's meta device
    assert isinstance(load(path), _Checked) and _Checked.built == 1


def test_old_format_files_load_with_a_warning(tmp_path):
    from safetensors import safe_open

    from sctorch.models import _base

    path = tmp_path / "m.safetensors"
    _toy().save(path)
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    old = _rewrite(
        path,
        tmp_path / "v1.safetensors",
        drop=("digest", "sha256_parts"),
        format_version="1",
        checksum=_base._checksum(tensors),
    )
    with pytest.warns(UserWarning, match="format version 1.*re-save"):
        m = load(old)
    assert m.genes == ["a", "b", "c"]
    # a version-2 file relabelled as version 1 (to skip the header digest) is refused
    relabelled = _rewrite(path, tmp_path / "v2as1.safetensors", format_version="1")
    with pytest.raises(ModelFileError, match=r"v2as1\.safetensors.*format_version"):
        load(relabelled)


def test_an_absurdly_long_training_warns_once_with_the_estimate(monkeypatch):
    import warnings

    from sctorch import _utils

    net = torch.nn.Linear(1, 1)
    x = torch.ones(4, 1)
    scores = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(_utils, "LONG_RUN_SECONDS", 1e-9)  # any run is "long" here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = fit(
            net,
            lambda b: (net(x) ** 2).mean(),
            lambda e: [0, 1],
            epochs=10**9,
            validate=lambda: next(scores),
            patience=1,
            progress=False,
            desc="toy",
        )
    long = [w for w in caught if "estimated" in str(w.message)]
    assert len(long) == 1 and len(hist["train_loss"]) == 2  # once; early stopping still ends it
    msg = str(long[0].message)
    assert "toy" in msg and "1,000,000,000 epochs" in msg and "may stop earlier" in msg
    assert re.search(r"estimated [0-9.,]+ (s|min|h|days|years)", msg)
    monkeypatch.setattr(_utils, "LONG_RUN_SECONDS", 24 * 3600.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal run does not warn
        fit(net, lambda b: (net(x) ** 2).mean(), lambda e: [0], epochs=3, progress=False)


def test_run_length_estimate():
    from sctorch._utils import estimate_run

    assert estimate_run(epochs=10**9, seconds_per_epoch=0.3) == pytest.approx(3e8)
    assert estimate_run(epochs=10, seconds_per_epoch=2.0, done=4) == pytest.approx(12.0)


def test_a_module_too_large_for_memory_is_refused_before_allocation(monkeypatch):
    from sctorch import _utils

    monkeypatch.setattr(_utils, "available_memory", lambda: 2**30)
    _Checked.built = 0
    with pytest.raises(MemoryError, match=r"_Checked of 268,435,4\d\d parameters.*GiB.*1\.0 GiB"):
        _Checked.build_module(_CheckedCfg(d=2**28))
    assert _Checked.built == 0  # nothing allocated
    assert isinstance(_Checked.build_module(_CheckedCfg(d=3)), torch.nn.Linear)
    assert _Checked.built == 1
