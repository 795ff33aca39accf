"""The one preset mechanism: a method's settings are one dataclass, a preset a named instance.

Every method has one config class (:class:`~sctorch.tcer.TCERConfig`,
:class:`~sctorch.stimpute.StImputeConfig`, :class:`~sctorch.scrobust.ScRobustConfig`),
a subclass of :class:`MethodConfig` with one :meth:`~MethodConfig.validate`. Its presets
(``"default"``, ``"paper"``) are named instances in the class's ``PRESETS``. A public
function resolves its settings in one way, scvi-tools' ``merge_kwargs`` pattern:

1. the preset named by ``preset=`` (a config instance),
2. replaced whole by ``config=`` when that is a config instance, or updated field by field
   when it is a mapping,
3. updated by the explicit keyword arguments (``**kwargs``), which always win,

and the result is validated once (:func:`resolve_config`). ``None`` in a field is never a
"use the preset" sentinel: a field whose ``None`` has a meaning (e.g. "choose by
cross-validation") documents it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="MethodConfig")

__all__ = ["MethodConfig", "renamed", "resolve_config", "warn_unused"]


@dataclasses.dataclass
class MethodConfig:
    """Base of the config dataclasses: presets, validated replacement, records.

    A subclass defines its fields, ``PRESETS`` (name → instance, ``"default"`` first) and
    :meth:`validate`.
    """

    PRESETS: ClassVar[dict[str, Any]] = {}
    #: old preset names still accepted (name → current name), with a FutureWarning
    PRESET_ALIASES: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:  # pragma: no cover - every subclass overrides it
        """Raise ``ValueError`` naming the first out-of-range setting."""
        raise NotImplementedError

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings (the dataclass fields)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """A fresh copy of the preset ``name``.

        Raises
        ------
        ValueError
            If ``name`` is not a preset of this method.
        """
        if name in cls.PRESET_ALIASES:
            import warnings

            new = cls.PRESET_ALIASES[name]
            warnings.warn(
                f"preset={name!r} is now called preset={new!r}; the old name will be "
                "removed in a later release.",
                FutureWarning,
                stacklevel=4,
            )
            name = new
        if not isinstance(name, str) or name not in cls.PRESETS:
            raise ValueError(
                f"preset must be one of {sorted(cls.PRESETS)} for {cls.__name__}, got {name!r}."
            )
        return dataclasses.replace(cls.PRESETS[name])

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (not validated; see :func:`resolve_config`).

        Raises
        ------
        TypeError
            If a name is not a setting of this config (the message suggests the closest).
        """
        check_fields(type(self), changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (tuples kept)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getitem__(self, key: str):
        """Dict-style read access (``config["epochs"]``)."""
        if not isinstance(key, str) or key not in self.field_names():
            raise KeyError(key)
        return getattr(self, key)


def check_fields(cls: type[MethodConfig], names) -> None:
    """Raise ``TypeError`` for a name that is not a field of ``cls``, suggesting the closest."""
    valid = cls.field_names()
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{name!r} is not a setting of {cls.__name__}.{hint} Its settings "
                f"are: {', '.join(valid)}."
            )


def resolve_config(
    cls: type[C],
    preset: str | None,
    config: C | Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """The settings of one call: preset, then ``config``, then the explicit keywords.

    Parameters
    ----------
    cls
        The method's config class.
    preset
        Name of a preset in ``cls.PRESETS`` (``None``: ``"default"``).
    config
        ``None``, an instance of ``cls`` (replaces the preset; then ``preset`` must be
        ``None`` or ``"default"``), or a mapping of field → value applied to the preset.
    overrides
        Explicit keyword arguments of the public function; they win over both.

    Returns
    -------
    A validated instance of ``cls``.

    Raises
    ------
    TypeError
        If ``config`` is of another type, or a key is not a setting of ``cls``.
    ValueError
        If ``preset`` is unknown, both a non-default ``preset`` and a config instance are
        given, or a setting is out of range.
    """
    base = cls.preset("default" if preset is None else preset)
    if isinstance(config, cls):
        if preset not in (None, "default"):
            raise ValueError(
                f"Pass either preset={preset!r} or a {cls.__name__} instance as "
                f"config=, not both; to start from the preset and change some "
                f"settings, pass config as a dict or "
                f"{cls.__name__}.preset({preset!r}).replace(...)."
            )
        base = dataclasses.replace(config)
    elif isinstance(config, Mapping):
        base = base.replace(**dict(config))
    elif config is not None:
        raise TypeError(
            f"config must be a {cls.__name__}, a dict of its settings or None, "
            f"got {type(config).__name__}."
        )
    if overrides:
        base = base.replace(**dict(overrides))
    base.validate()
    return base


def renamed(kwargs: dict[str, Any], *, old: str, new: str, where: str) -> dict[str, Any]:
    """Accept the keyword ``old`` as ``new`` for one release, with a ``FutureWarning``.

    ``kwargs`` (a function's ``**kwargs``) is changed in place and returned.

    Raises
    ------
    TypeError
        If both ``old`` and ``new`` are given.
    """
    if old in kwargs:
        import warnings

        if new in kwargs:
            raise TypeError(f"{where}() got both {old}= and its new name {new}=; pass {new}=.")
        warnings.warn(
            f"{where}(): {old}= is now called {new}=; the old name will be removed in "
            "a later release.",
            FutureWarning,
            stacklevel=4,
        )
        kwargs[new] = kwargs.pop(old)
    return kwargs


def warn_unused(given, unused, why: str) -> None:
    """Warn (``UserWarning``) about explicitly given settings that this call does not use.

    ``given``: the names the user passed; ``unused``: the names this call ignores; ``why``:
    the reason, e.g. ``"method='transfer' trains no network"``.
    """
    names = sorted(set(given) & set(unused))
    if names:
        import warnings

        warnings.warn(
            f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not used: {why}.",
            UserWarning,
            stacklevel=4,
        )
