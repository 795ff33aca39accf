"""BaseModel: the one lifecycle (config, gene list, history, device, save/load) of every model.

A subclass is the user-facing model of one method (``TCERModel``, ``StImputeModel``,
``ScRobustModel``); it owns a torch module (``self.module``) and adds its own ``fit`` and
apply methods. Every model is stored in the same format, one ``.safetensors`` file:

- tensors ``module.<name>`` (the module's ``state_dict``) and ``array.<name>`` (extra
  arrays of the model, e.g. a GenoMap placement);
- header metadata (JSON strings, never unpickled): ``format`` = ``"sctorch.model"``,
  ``format_version``, ``model_class``, ``sctorch_version``, ``config``, ``genes``,
  ``history``, ``extra``, ``sha256_parts`` (the SHA-256 of each header field and of the
  tensors, used to name what changed) and ``digest``.

**Integrity rule (format version 2).** ``digest`` is the SHA-256 of the canonical JSON of
every other header field (``json.dumps(fields, sort_keys=True, separators=(",", ":"))``)
followed by the SHA-256 of every tensor's name, dtype, shape and bytes: an edit of any
header value (class names, gene order, configuration, ``model_class``) or any weight makes
the file fail to load, with one :class:`ModelFileError` naming the file and the field.
The digest protects against corruption and careless edits; it does not protect against a
deliberate forger, who can recompute it (it is not a signature). Whatever the digest says,
every header value is then validated (type, range, agreement with the tensors' shapes, the
method's own checks in :meth:`BaseModel.validate_header`) before anything is built from
it, so even a forged file fails with a message instead of allocating without bound.

Files of format version 1 (sctorch before the header digest: ``checksum`` covers the
tensors only) are still read, with a :class:`UserWarning` that their header is not
protected; re-save them to upgrade. A file that claims version 1 but carries a version-2
``digest`` is refused (relabelling must not switch the header check off).

Loading never executes code from the file; a file that is not a sctorch model, that is
corrupted, or whose weights do not fit its configuration gets one :class:`ModelFileError`
(a :class:`ValueError`) saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FORMAT = "sctorch.model"
FORMAT_VERSION = 2
_OLD_VERSIONS = (1,)  # read with a warning: their header is not covered by a digest
_JSON_FIELDS = ("config", "genes", "history", "extra")
_MAX_HEADER = 256 * 2**20  # a larger safetensors header is not a sctorch model

_REGISTRY: dict[str, type[BaseModel]] = {}


class ModelFileError(ValueError):
    """A file that is not a (valid, intact) sctorch model file."""


def _checksum(tensors: dict[str, Any]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _canonical(fields: dict[str, str]) -> bytes:
    """Canonical JSON of header fields (sorted keys, no whitespace), as UTF-8 bytes."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _header_digests(meta: dict[str, str], tensors: dict[str, Any]) -> dict[str, str]:
    """The ``sha256_parts`` and ``digest`` fields of a header (see the module docstring).

    ``digest`` covers every field of ``meta`` but ``digest`` itself (``sha256_parts``
    included) and every tensor.
    """
    tensor_sha = _checksum(tensors)
    fields = {k: str(v) for k, v in meta.items() if k not in ("digest", "sha256_parts")}
    parts = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in fields.items()}
    parts["tensors"] = tensor_sha
    fields["sha256_parts"] = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(_canonical(fields))
    h.update(tensor_sha.encode())
    return {"sha256_parts": fields["sha256_parts"], "digest": h.hexdigest()}


def _verify(meta: dict[str, str], tensors: dict[str, Any], path: Path) -> None:
    """Raise :class:`ModelFileError` unless the file's digest matches its header and tensors."""
    want = _header_digests(meta, tensors)
    if meta.get("digest") == want["digest"]:
        return
    changed: list[str] = []
    try:
        stored = json.loads(meta.get("sha256_parts", ""))
        now = json.loads(want["sha256_parts"])
        changed = sorted(k for k in set(now) | set(stored) if stored.get(k) != now.get(k))
    except (json.JSONDecodeError, AttributeError):
        changed = ["sha256_parts"]
    what = (
        "its weights (tensors)"
        if changed == ["tensors"]
        else "header field(s) "
        + ", ".join(repr(c) for c in changed if c != "tensors")
        + (" and its weights" if "tensors" in changed else "")
        if changed
        else "the 'digest' field"
    )
    raise ModelFileError(
        f"{path}: the file does not match the digest (checksum) stored at save: {what} "
        "changed since it was written; the file was edited or is corrupted. Re-train "
        "the model or restore the file (models are written only by Model.save())."
    )


def _bad_field(path: Path, key: str, why: str) -> ModelFileError:
    return ModelFileError(
        f"{path}: header field {key!r} {why}; the file was edited or is corrupted "
        "(models are written only by Model.save())."
    )


def _check_generic_header(values: dict[str, Any], path: Path) -> None:
    """Types of the header values every model has (before anything is built from them)."""
    genes = values["genes"]
    if not isinstance(genes, list):
        raise _bad_field(path, "genes", f"must be a list of gene names, got {type(genes).__name__}")
    bad = next((g for g in genes if not isinstance(g, str)), None)
    if bad is not None:
        raise _bad_field(path, "genes", f"must hold str names only, got {bad!r}")
    if len(set(genes)) != len(genes):
        seen: set[str] = set()
        dup = next(g for g in genes if g in seen or seen.add(g))
        raise _bad_field(path, "genes", f"has duplicate name(s), e.g. {dup!r}")
    hist = values["history"]
    if not isinstance(hist, dict):
        raise _bad_field(
            path,
            "history",
            f"must be a dict {{name: [value per epoch]}}, got {type(hist).__name__}",
        )
    for k, v in hist.items():
        ok = isinstance(v, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in v
        )
        if not ok:
            raise _bad_field(
                path, "history", f"entry {k!r} must be a list of numbers, got {v!r:.60}"
            )
    for key in ("config", "extra"):
        if not isinstance(values[key], dict):
            raise _bad_field(path, key, f"must be a dict, got {type(values[key]).__name__}")


def _meta_module(klass, config, extra, budget: float = float("inf")):
    """``klass._build_module`` on torch's meta device: shapes without memory.

    Raises ``_TooBig`` as soon as the build creates more than ``budget`` tensor elements;
    returns ``None`` for a module that cannot be built on the meta device.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    count = [0]

    class _Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.device.type == "meta":
                count[0] += out.numel()
                if count[0] > budget:
                    raise _TooBig
            return out

    try:
        with torch.device("meta"), _Count():
            return klass._build_module(config, extra)
    except _TooBig:
        raise
    except Exception:  # not buildable on meta: left to the real build
        return None


class _TooBig(Exception):
    """A dry build exceeded its element budget."""


def _dry_build(klass, config, extra, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Build the module on torch's meta device (nothing allocated) and compare its shapes.

    The build is stopped as soon as it creates more tensor elements than the file holds
    (with slack for temporaries), so a forged size (e.g. ``n_layers=100000``) is refused
    in time proportional to the file, not to the forged size.
    """
    budget = 4 * sum(int(np.prod(s)) for s in shapes.values()) + 2**20
    try:
        module = _meta_module(klass, config, extra, budget)
    except _TooBig:
        raise ModelFileError(
            f"{path}: the header's configuration describes a module of more than "
            f"{budget:,} values, but the file's weights hold "
            f"{sum(int(np.prod(s)) for s in shapes.values()):,}; the size fields of "
            "'config' do not fit the stored tensors (edited or corrupted file)."
        ) from None
    if module is None:
        return
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = {k[7:]: s for k, s in shapes.items() if k.startswith("module.")}
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ModelFileError(
                f"{path}: the header's 'config' gives tensor {key!r} the shape "
                f"{got.get(key, 'none')}, but the file stores shape {want.get(key, 'none')};"
                " the configuration does not fit the weights (edited or corrupted file)."
            )


def check_save_path(path: str | Path, *, overwrite: bool, what: str = "") -> Path:
    """Check a model output path before any work: a new file (or ``overwrite``) in a folder.

    Raises
    ------
    IsADirectoryError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError
        Saying which, and what to pass instead (``what`` names the option, e.g. for the CLI):
        ``path`` is a folder, exists, its folder is missing or a file, or no file can be
        written there (see :func:`check_writable_folder`).
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{name} is a folder; pass a file path such as {path / 'model.safetensors'}."
        )
    if path.exists() and not overwrite:
        hint = "--overwrite" if what.startswith("--") else "overwrite=True"
        raise FileExistsError(f"{name} already exists; pass {hint} to replace it.")
    check_writable_folder(path, name)
    return path


def check_writable_folder(path: Path, name: str) -> None:
    """Refuse, before any work, a file path whose folder is missing, a file or not writable.

    Writability is probed by creating (and removing) an empty temporary file beside
    ``path``, which is what saving does; permission bits alone do not tell (e.g. as root,
    or on a read-only mount).

    Raises
    ------
    NotADirectoryError
        If an ancestor of ``path`` is a file.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    PermissionError
        If no file can be created in it (the message gives the system's reason).
    """
    parent = Path(path).parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise NotADirectoryError(
                    f"{name} cannot be created: {up} is a file, not a folder; pass a path "
                    "inside a folder."
                )
            break
    if not parent.is_dir():
        raise FileNotFoundError(f"Folder {parent} of {name} does not exist; create it first.")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{Path(path).name}.", suffix=".probe")
    except OSError as err:
        raise PermissionError(
            f"{name} cannot be written: no file can be created in folder {parent} "
            f"({err.strerror or err}); choose a folder you can write to."
        ) from None
    os.close(fd)
    os.remove(probe)


def _read_header(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, validated without trusting the file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is not a sctorch model file ({size} bytes: too short).")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise ModelFileError(f"{path} is not a sctorch model file (no safetensors header).")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path} is not a sctorch model file (unreadable header).") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is not a sctorch model file (no {FORMAT!r} tag in its "
            "header). Models are written by Model.save()."
        )
    return meta


def _json_field(meta: dict[str, str], key: str, path: Path):
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(
            f"{path}: sctorch model file lacks a readable {key!r} "
            "field; it is corrupted or was not written by sctorch."
        ) from None


class BaseModel:
    """The lifecycle shared by every sctorch model.

    Parameters
    ----------
    module
        The method's :class:`torch.nn.Module` (``None`` before training, for models that
        build it in ``fit``).
    config
        Hyper-parameters: a dataclass instance of ``config_cls`` (or a JSON-able dict when
        the subclass has none). Everything needed to rebuild ``module``.
    genes
        The gene list (or token vocabulary) the model was trained on, in model order.
    history
        Per-epoch training records, ``{name: [value per epoch]}`` (e.g. ``train_loss``,
        ``val_loss``), as written by :func:`sctorch.models.fit`.

    Subclasses implement :meth:`_build_module` and, where they carry more state,
    :meth:`_extra_state` / :meth:`_set_extra_state` and :meth:`_check_integrity`.
    """

    config_cls: ClassVar[type | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(
        self,
        module=None,
        *,
        config: Any = None,
        genes: Sequence[str] = (),
        history: dict[str, list[float]] | None = None,
    ):
        self.module = module
        if config is None and self.config_cls is not None:
            config = self.config_cls()
        self.config = config if config is not None else {}
        self.genes = [str(g) for g in genes]
        self.history: dict[str, list[float]] = {
            k: [float(x) for x in v] for k, v in (history or {}).items()
        }

    # ------------------------------------------------------------------ subclass hooks
    @classmethod
    def _build_module(cls, config: Any, extra: dict[str, Any]):
        """A fresh (untrained) module for ``config``; ``extra`` is :meth:`_extra_state`'s JSON."""
        raise NotImplementedError

    def _extra_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able extra fields and named numpy arrays to store beside the weights."""
        return {}, {}

    def _set_extra_state(self, extra: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    def _check_integrity(self) -> None:
        """Raise ``ValueError`` if the loaded parts of the model do not fit together."""

    @classmethod
    def validate_header(
        cls, config: dict[str, Any], genes: list[str], extra: dict[str, Any]
    ) -> Any:
        """Check a file's header values before anything is built; return the config object.

        Called by :meth:`load` after the generic checks (types of ``genes``, ``history``,
        ``config``, ``extra``) and before the module is built. The default builds
        ``config_cls(**config)`` and runs its ``validate()`` when it has one; a subclass
        extends it with its own checks (calling ``super()``) and raises ``ValueError``.

        Raises
        ------
        ValueError, TypeError
            Saying which value is out of range (:meth:`load` turns it into a
            :class:`ModelFileError` naming the file and the ``'config'`` field).
        """
        cfg = cls._config_from_dict(config)
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            try:
                validate()
            except NotImplementedError:
                pass
        return cfg

    @classmethod
    def build_module(cls, config: Any, extra: dict[str, Any] | None = None, *, training=True):
        """A fresh module for ``config``, refused before allocation if it cannot fit in memory.

        The module is first built on torch's meta device (no memory) to count its
        parameters; their float32 bytes (times 4 when ``training``: weights, gradients and
        Adam's two moments) are compared with the memory available
        (:func:`sctorch._utils.check_fits_in_memory`) before the real build.

        Raises
        ------
        MemoryError
            With the number of parameters, the bytes needed and the bytes available.
        """
        from .. import _utils

        extra = {} if extra is None else extra
        meta = _meta_module(cls, config, extra)
        if meta is not None:
            n = sum(p.numel() for p in meta.parameters())
            _utils.check_fits_in_memory(
                4.0 * n * (4 if training else 1),
                what=f"A {cls.__name__} of {n:,} parameters (float32"
                + (" weights, gradients and Adam state)" if training else " weights)"),
                advice="choose smaller network sizes (e.g. d_model, n_layers, "
                "dim_feedforward, n_features).",
            )
        return cls._build_module(config, extra)

    # ------------------------------------------------------------------ config
    def _config_dict(self) -> dict[str, Any]:
        if dataclasses.is_dataclass(self.config):
            return dataclasses.asdict(self.config)
        return dict(self.config)

    @classmethod
    def _config_from_dict(cls, d: dict[str, Any]):
        if cls.config_cls is None:
            return d
        fields = {f.name: f for f in dataclasses.fields(cls.config_cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for {cls.__name__} (its settings: "
                f"{sorted(fields)}); the file was edited, or written by another sctorch "
                "version."
            )
        kw = {}
        for k, v in d.items():
            if isinstance(v, list) and str(fields[k].type).startswith("tuple"):
                v = tuple(v)
            kw[k] = v
        return cls.config_cls(**kw)

    # ------------------------------------------------------------------ device
    @property
    def device(self):
        """The torch device of the module's parameters (``None`` without a module)."""
        if self.module is None:
            return None
        p = next(iter(self.module.parameters()), None)
        return None if p is None else p.device

    def to(self, device) -> BaseModel:
        """Move the module to ``device`` (in place); returns ``self``."""
        if self.module is not None:
            self.module.to(device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(genes={len(self.genes)}, config={self._config_dict()})"

    # ------------------------------------------------------------------ genes
    def gene_indexer(self, var_names, *, min_shared: int, what: str = "adata") -> np.ndarray:
        """Position of each model gene in ``var_names`` (``-1`` where missing).

        Missing genes are reported in a :class:`UserWarning` (callers treat them as not
        detected); fewer than ``min_shared`` shared genes is refused.

        Raises
        ------
        ValueError
            If ``var_names`` shares fewer than ``min_shared`` of the model's genes.
        """
        import pandas as pd

        pos = pd.Index(var_names).get_indexer(self.genes)
        n_shared = int((pos >= 0).sum())
        if n_shared < min_shared:
            raise ValueError(
                f"{what} shares {n_shared} of the model's {len(self.genes)} genes "
                f"(matched exactly on var_names); at least {min_shared} are needed. "
                "Check that var_names use the same gene symbols (and case) as "
                "the training data."
            )
        if n_shared < len(self.genes):
            warnings.warn(
                f"{len(self.genes) - n_shared} of the model's {len(self.genes)} genes "
                f"are missing from {what}; they are treated as not detected.",
                UserWarning,
                stacklevel=3,
            )
        return pos

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model to one ``.safetensors`` file (see the module docstring).

        Parameters
        ----------
        path
            File to write (conventionally ``*.safetensors``).
        overwrite
            Replace an existing file.

        Under ``torchrun`` only rank 0 writes the file (the ranks hold identical weights).

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.
        FileNotFoundError
            If the folder of ``path`` does not exist.
        ValueError
            If the model has no trained module yet.
        """
        import torch
        from safetensors.torch import save_file

        from .. import __version__

        path = Path(path)
        if self.module is None:
            raise ValueError(
                f"This {type(self).__name__} has not been trained; call fit() before save()."
            )
        check_save_path(path, overwrite=overwrite)
        from ._distributed import is_main_process

        if not is_main_process():  # under torchrun only rank 0 writes (all ranks agree)
            return
        extra, arrays = self._extra_state()
        tensors = {
            f"module.{k}": v.detach().cpu().contiguous()
            for k, v in self.module.state_dict().items()
        }
        for k, a in arrays.items():
            tensors[f"array.{k}"] = torch.as_tensor(np.ascontiguousarray(a))
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "model_class": type(self).__name__,
            "sctorch_version": __version__,
            "config": json.dumps(self._config_dict()),
            "genes": json.dumps(self.genes),
            "history": json.dumps(self.history),
            "extra": json.dumps(extra),
        }
        meta.update(_header_digests(meta, tensors))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:  # write beside, then rename: an existing file is never left half-written
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> BaseModel:
        """Read a model written by :meth:`save` (safetensors + JSON; no code is executed).

        Called on :class:`BaseModel` (``sctorch.models.load``) it returns whichever model
        class the file holds; called on a subclass, the file must hold that class.

        Parameters
        ----------
        path
            A file written by :meth:`save`.
        device
            Torch device for the module (``None``: CUDA, then MPS, else CPU).

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ModelFileError
            (a :class:`ValueError`) If ``path`` is not a sctorch model file, was edited or
            is corrupted (digest), holds another model class, has a header value of the
            wrong type or out of range, or its weights or parts do not fit its
            configuration; the message names the file and the field.

        Warns
        -----
        UserWarning
            For a file of format version 1 (header not covered by its checksum).
        """
        from safetensors.torch import load_file

        from .._utils import resolve_device

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Model file {path} not found.")
        if path.is_dir():
            raise ModelFileError(
                f"{path} is a folder, not a sctorch model file (models are "
                "single .safetensors files written by Model.save())."
            )
        meta = _read_header(path)
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            version = -1
        if version != FORMAT_VERSION and version not in _OLD_VERSIONS:
            raise ModelFileError(
                f"{path} has model format version {meta.get('format_version')!r} (header "
                f"field 'format_version'); this sctorch reads versions "
                f"{sorted((*_OLD_VERSIONS, FORMAT_VERSION))}."
            )
        if version != FORMAT_VERSION and "digest" in meta:
            raise _bad_field(
                path,
                "format_version",
                f"says {version}, but the file carries a version-{FORMAT_VERSION} digest",
            )
        name = meta.get("model_class")
        klass = _REGISTRY.get(name) if cls is BaseModel else cls
        if klass is None:
            raise _bad_field(
                path,
                "model_class",
                f"names {name!r}, which is no sctorch model class "
                f"(known: {sorted(k for k in _REGISTRY if not k.startswith('_'))})",
            )
        if name != klass.__name__:
            raise ModelFileError(
                f"{path} holds a {name}, not a {klass.__name__}; load it with "
                f"sctorch.models.{name}.load()."
            )
        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ModelFileError(
                f"{path}: the weights of this sctorch model file cannot be "
                f"read ({type(err).__name__}: {err})."
            ) from None
        if version == FORMAT_VERSION:
            _verify(meta, tensors, path)
        else:
            if _checksum(tensors) != meta.get("checksum"):
                raise ModelFileError(
                    f"{path}: the weights do not match the checksum stored at save;"
                    " the file is corrupted. Re-train or restore the file."
                )
            warnings.warn(
                f"{path} has model format version {version}, whose checksum covers the "
                "weights only, not the header (configuration, gene list); re-save it "
                "(model.save(path, overwrite=True)) to protect the header too.",
                UserWarning,
                stacklevel=3,
            )
        values = {k: _json_field(meta, k, path) for k in _JSON_FIELDS}
        _check_generic_header(values, path)
        extra = values["extra"]
        try:
            config = klass.validate_header(values["config"], values["genes"], extra)
        except (ValueError, TypeError) as err:
            raise _bad_field(path, "config", f"is not valid ({err})") from None
        _dry_build(klass, config, extra, {k: tuple(v.shape) for k, v in tensors.items()}, path)
        model = klass(None, config=config, genes=values["genes"], history=values["history"])
        arrays = {k[6:]: v.numpy() for k, v in tensors.items() if k.startswith("array.")}
        try:
            model._set_extra_state(extra, arrays)
            module = klass.build_module(config, extra, training=False)
            module.load_state_dict(
                {k[7:]: v for k, v in tensors.items() if k.startswith("module.")}, strict=True
            )
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise ModelFileError(
                f"{path}: the stored parts do not fit together ({type(err).__name__}: {err})."
            ) from None
        module.eval()
        model.module = module
        try:
            model._check_integrity()
        except ValueError as err:
            raise ModelFileError(f"{path}: {err}") from None
        return model.to(resolve_device(device))


def load(path: str | Path, *, device: str | None = None) -> BaseModel:
    """Load any sctorch model file; returns an instance of the model class the file holds.

    Parameters
    ----------
    path
        A ``.safetensors`` file written by ``Model.save`` (:class:`TCERModel`,
        :class:`StImputeModel` or :class:`ScRobustModel`).
    device
        Torch device for the weights (``None``: CUDA, then MPS, else CPU).

    Returns
    -------
    The model, in evaluation mode, with its configuration, gene list (or vocabulary) and
    training history; nothing in the file is executed (safetensors + JSON, checksum
    verified). Format: :mod:`sctorch.models._base`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        (a :class:`ValueError`) If ``path`` is not an intact sctorch model file.
    """
    return BaseModel.load(path, device=device)
