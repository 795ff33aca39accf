"""Shared docstring text for the parameters that recur across public functions.

Each recurring parameter is written once here. A docstring names it by a line holding only
``{name}`` (e.g. ``{device}``) in its Parameters section, and :func:`doc_params` replaces
that line by the fragment, indented as the placeholder was (as Scanpy's ``_doc_params``
and scvi-tools' docrep do).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

FRAGMENTS: dict[str, str] = {
    "layer": """\
layer
    Layer of ``adata`` holding the input (``None``: ``adata.X``).""",
    "ref_layer": """\
ref_layer
    Layer of the reference AnnData holding its input (``None``: its ``.X``).""",
    "copy": """\
copy
    Work on and return a copy of ``adata`` instead of writing into it.""",
    "rng": """\
rng
    Seed (int) or :class:`numpy.random.Generator`; the same seed on the same device gives
    the same result (``None``: fresh entropy).""",
    "random_state": """\
random_state
    Scanpy's older name for ``rng``, accepted as its alias; giving both is an error.""",
    "device": """\
device
    Torch device, e.g. ``"cpu"`` or ``"cuda:0"`` (``None``: CUDA, then MPS, else CPU).""",
    "progress": """\
progress
    Show ``tqdm`` progress bars.""",
    "return_model": """\
return_model
    Also return the trained model (see Returns).""",
    "preset": """\
preset
    Name of a preset of the method's config class (``"default"`` or ``"paper"``); the
    preset's settings are the starting point that ``config`` and ``**kwargs`` change.""",
    "config": """\
config
    The method's config (an instance of its config class, which replaces the preset), or a
    dict of some of its settings, applied to the preset.""",
    "kwargs": """\
**kwargs
    Settings of the method's config class given one by one; they override ``preset`` and
    ``config``. An unknown name raises ``TypeError`` naming the closest setting.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


def fill(doc: str, fragments: dict[str, str] | None = None) -> str:
    """``doc`` with each line ``{name}`` replaced by the fragment ``name``, re-indented.

    Raises
    ------
    KeyError
        If a placeholder names no fragment.
    """
    table = FRAGMENTS if fragments is None else {**FRAGMENTS, **fragments}

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in table:
            raise KeyError(
                f"docstring placeholder {{{name}}} names no fragment in sctorch._docs.FRAGMENTS"
            )
        return "\n".join(
            m.group("indent") + line if line else line for line in table[name].splitlines()
        )

    return _PLACEHOLDER.sub(sub, doc)


def doc_params(func: F) -> F:
    """Decorator: fill the ``{name}`` placeholders of ``func``'s docstring (see :func:`fill`)."""
    if func.__doc__:
        func.__doc__ = fill(func.__doc__)
    return func
