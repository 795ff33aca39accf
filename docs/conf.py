"""Sphinx configuration for sctorch.

Besides the usual settings, this file generates three things at build time, so that the
built docs always match the repository:

- ``docs/benchmarks/``: copies of ``benchmarks/results/*.md`` and the PNG files they
  name (globbed by ``benchmarks.md``);
- ``docs/tutorials/``: copies of ``tutorials/*.ipynb`` (globbed by ``tutorials.md``);
- ``docs/_generated/cli_help.md``: the ``--help`` text of the ``sctorch`` command and of
  every subcommand, from :func:`sctorch.cli.build_parser` (included by ``cli.md``).

All three folders are git-ignored and rewritten on every build.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import shutil
from importlib import metadata
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "sctorch"
author = "sctorch developers"
copyright = "2026, sctorch developers"
try:
    release = metadata.version("sctorch")
except metadata.PackageNotFoundError:  # pragma: no cover
    release = "0.0.0"
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
typehints_document_rtype = False
always_use_bars_union = True
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "colon_fence"]
# "#some-heading" links inside a page (and in the copied benchmark results) resolve
myst_heading_anchors = 3
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_theme = "furo"
html_title = "sctorch"
nitpicky = False


# --------------------------------------------------------------------------------------
# helpers: keep a generated folder equal to a {file name: bytes} mapping
# --------------------------------------------------------------------------------------
def _sync_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly ``files``; unchanged files keep their mtime."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in files:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    for name, data in files.items():
        target = folder / name
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)


# --------------------------------------------------------------------------------------
# benchmark results -> docs/benchmarks/
# --------------------------------------------------------------------------------------
BENCH_SRC = ROOT / "benchmarks" / "results"
BENCH_DST = DOCS / "benchmarks"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_PNG = re.compile(r"[\w.\-/]+\.png\b")


def _adjust_result(text: str, stem: str, pictures: set[str], pages: set[str]) -> str:
    """Make one copied results file build without warnings; the original is untouched.

    - the page gets exactly one level-1 title (the first heading, promoted if needed; a
      title made from the file name if it has none) and no heading skips a level, so
      MyST's ``myst.header`` check passes;
    - links and images pointing at a copied file (another results page, a picture)
      point at the copy; a relative link to a file that is not copied (a script,
      another folder) becomes plain text naming the path, as the docs have no target;
    - every copied picture named in the text but not shown as an image is appended as
      one, so the PNG appears on the page.
    """
    out: list[str] = []
    in_fence = False
    levels: list[int] = []  # original levels of the open headings; [0] is the title's
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line)
        if m:
            level = len(m.group(1))
            if not levels:
                levels = [level]
            else:
                while len(levels) > 1 and levels[-1] >= level:
                    levels.pop()
                levels.append(level)
            line = f"{'#' * min(len(levels), 6)} {m.group(2)}"
        out.append(line)
    body = "\n".join(out)
    if not levels:
        body = f"# {stem.replace('_', ' ').capitalize()}\n\n{body}"

    def _link(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target) or target.startswith("#"):
            return m.group(0)  # URL or in-page anchor
        path, _, anchor = target.partition("#")
        name = Path(path).name
        if name in pictures or name in pages:
            return f"[{label}]({name}{'#' + anchor if anchor else ''})"
        return f"{label} (`{posixpath.normpath('benchmarks/results/' + target)}`)"

    def _image(m: re.Match) -> str:
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target):
            return m.group(0)
        return m.group(0).replace(target, Path(target).name)

    body = _LINK.sub(_link, body)
    body = _IMAGE.sub(_image, body)
    shown = {Path(t).name for t in _IMAGE.findall(body)}
    named = sorted({Path(p).name for p in _PNG.findall(body)})
    extra = [p for p in named if p in pictures and p not in shown]
    for name in extra:
        body += f"\n\n![{name}]({name})"
    return body.rstrip() + "\n"


def _copy_benchmarks() -> None:
    files: dict[str, bytes] = {}
    results = sorted(BENCH_SRC.glob("*.md")) if BENCH_SRC.is_dir() else []
    available = {p.name for p in BENCH_SRC.glob("*.png")} if BENCH_SRC.is_dir() else set()
    pages = {md.name for md in results}
    for md in results:
        text = md.read_text(encoding="utf-8")
        named = {Path(p).name for p in _PNG.findall(text)} & available
        for name in named:
            files[name] = (BENCH_SRC / name).read_bytes()
        files[md.name] = _adjust_result(text, md.stem, named, pages).encode("utf-8")
    _sync_folder(BENCH_DST, files)


# --------------------------------------------------------------------------------------
# tutorials/*.ipynb -> docs/tutorials/
# --------------------------------------------------------------------------------------
TUT_SRC = ROOT / "tutorials"
TUT_DST = DOCS / "tutorials"


def _copy_tutorials() -> None:
    notebooks = sorted(TUT_SRC.glob("*.ipynb")) if TUT_SRC.is_dir() else []
    _sync_folder(TUT_DST, {nb.name: nb.read_bytes() for nb in notebooks})


# --------------------------------------------------------------------------------------
# `sctorch --help` and every subcommand's help -> docs/_generated/cli_help.md
# --------------------------------------------------------------------------------------
CLI_OUT = DOCS / "_generated" / "cli_help.md"
HELP_WIDTH = 88


def _walk_parsers(parser: argparse.ArgumentParser, helps: str | None = None, depth: int = 0):
    """Yield ``(depth, parser, one-line help)`` for a parser and all its subparsers."""
    yield depth, parser, helps
    seen: set[int] = set()
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        short = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            if id(sub) in seen or short.get(name) == argparse.SUPPRESS:
                continue  # an alias of a parser already listed, or a hidden subcommand
            seen.add(id(sub))
            yield from _walk_parsers(sub, short.get(name), depth + 1)


def _format_help(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at a fixed width (independent of the terminal)."""
    cls = parser.formatter_class
    parser.formatter_class = lambda prog: cls(prog, width=HELP_WIDTH)
    try:
        return parser.format_help()
    finally:
        parser.formatter_class = cls


def _write_cli_help() -> None:
    from sctorch.cli import build_parser

    lines: list[str] = []
    for depth, parser, short in _walk_parsers(build_parser()):
        if depth:
            lines += [f"{'#' * min(depth + 1, 6)} `{parser.prog}`", ""]
            if short:
                lines += [short.rstrip(".") + ".", ""]
        lines += ["```text", _format_help(parser).rstrip(), "```", ""]
    text = "\n".join(lines)
    CLI_OUT.parent.mkdir(parents=True, exist_ok=True)
    if not CLI_OUT.exists() or CLI_OUT.read_text(encoding="utf-8") != text:
        CLI_OUT.write_text(text, encoding="utf-8")


def setup(app):
    _copy_benchmarks()
    _copy_tutorials()
    _write_cli_help()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
