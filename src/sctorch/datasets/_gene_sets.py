"""Gene sets from GMT and JSON files (MSigDB, pegasus, besca, sc-type, scRobust lists)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ._loaders import _path, data_dir

_ALIASES = {
    "hallmark": "pegasuspy_1.10.2/h.all.v7.5.1.symbols.gmt",
    "c2_canonical": "pegasuspy_1.10.2/c2.cp.v7.5.1.symbols.gmt",
    "human_immune_markers": "pegasuspy_1.10.2/human_immune_cell_markers.json",
    "mouse_brain_markers": "pegasuspy_1.10.2/mouse_brain_cell_markers.json",
    "besca_immune": "besca_2.5.5/Immune.gmt",
    "scrobust_pancreas": "scrobust_pancreas/scrobust_readme_pancreas_celltype_genesets.json",
    "sctype": "sctype/ScTypeDB_full.json",
}


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Read a GMT file: one gene set per line, ``name<TAB>description<TAB>gene<TAB>gene…``.

    Parameters
    ----------
    path
        Path of the ``.gmt`` file.

    Returns
    -------
    ``{set name: [genes]}`` in file order; empty gene fields and duplicates are dropped.

    Raises
    ------
    ValueError
        If the file is not UTF-8 text (binary or compressed: says so), a non-empty line
        has fewer than two tab-separated fields or an empty set
        name, or if two lines carry the same set name (names every duplicate and its
        line numbers; nothing is returned, so no set silently replaces another).
    """
    out: dict[str, list[str]] = {}
    lines: dict[str, list[int]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a text GMT file: byte 0x{err.object[err.start]:02x} at "
            f"position {err.start} is not UTF-8 text (a binary, compressed or other file?). "
            "Pass a tab-separated .gmt file (name<TAB>description<TAB>genes…), "
            "decompressed."
        ) from None
    if "\x00" in text:
        raise ValueError(
            f"{path} is not a text GMT file (it holds NUL bytes: a binary file?). Pass a "
            "tab-separated .gmt file (name<TAB>description<TAB>genes…)."
        )
    for i, line in enumerate(text.split("\n"), 1):  # open() made the newlines universal
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{path}: line {i} is not GMT (name<TAB>description<TAB>genes…).")
        name = fields[0].strip()
        if not name:
            raise ValueError(
                f"{path}: line {i} has an empty gene-set name; give every set "
                "a name in the first field."
            )
        lines.setdefault(name, []).append(i)
        genes = [g.strip() for g in fields[2:] if g.strip()]
        out[name] = list(dict.fromkeys(genes))
    dups = {k: v for k, v in lines.items() if len(v) > 1}
    if dups:
        listed = "; ".join(f"{k!r} on lines {', '.join(map(str, v))}" for k, v in dups.items())
        raise ValueError(
            f"{path}: {len(dups)} gene-set name(s) occur more than once ({listed}). "
            "Set names must be unique: rename or merge the duplicate lines in the "
            "file."
        )
    return out


def _pegasus_sets(node: dict, out: dict[str, list[str]], path: Path) -> None:
    for ct in node.get("cell_types", []):
        genes = [
            g[:-1] for m in ct.get("markers", []) for g in m.get("genes", []) if g.endswith("+")
        ]
        if ct["name"] in out:
            raise ValueError(
                f"{path}: cell type {ct['name']!r} is defined more than once "
                "(set names must be unique); rename or merge the entries in the "
                "file."
            )
        out[ct["name"]] = list(dict.fromkeys(genes))
        if ct.get("subtypes"):
            _pegasus_sets(ct["subtypes"], out, path)


def _read_json(path: Path, tissue: str | None) -> dict[str, list[str]]:
    def unique_keys(pairs):  # json.load would silently keep the last of two equal keys
        dup = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        if dup:
            raise ValueError(
                f"{path}: key(s) {dup} occur more than once in one JSON object "
                "(set names must be unique); rename or merge them in the file."
            )
        return dict(pairs)

    with open(path, encoding="utf-8") as fh:
        d = json.load(fh, object_pairs_hook=unique_keys)
    if isinstance(d, dict) and "cell_types" in d:  # pegasus marker database
        out: dict[str, list[str]] = {}
        _pegasus_sets(d, out, path)
        return out
    if isinstance(d, dict) and d and all(isinstance(v, list) for v in d.values()):
        return {k: list(dict.fromkeys(map(str, v))) for k, v in d.items()}
    if isinstance(d, dict) and d and all(isinstance(v, dict) for v in d.values()):  # sc-type
        if tissue is None or tissue not in d:
            raise ValueError(
                f"{path.name} holds markers per tissue; pass tissue= one of {sorted(d)}."
            )
        return {ct: list(dict.fromkeys(v.get("positive", []))) for ct, v in d[tissue].items()}
    raise ValueError(f"{path}: unrecognised gene-set JSON layout.")


def gene_sets(name: str | Path, *, tissue: str | None = None) -> dict[str, list[str]]:
    """Load a collection of gene sets as ``{set name: [gene symbols]}``.

    Parameters
    ----------
    name
        A path to a ``.gmt`` / ``.json`` file, a path relative to ``gene_sets/`` in the
        data directory (e.g. ``"pegasuspy_1.10.2/h.all.v7.5.1.symbols.gmt"``), or an
        alias: ``"hallmark"`` (MSigDB Hallmark v7.5.1, 50 sets), ``"c2_canonical"``
        (MSigDB C2 canonical pathways v7.5.1), ``"human_immune_markers"`` and
        ``"mouse_brain_markers"`` (pegasus marker databases: positive markers, subtypes as
        their own sets), ``"besca_immune"`` (besca immune signatures),
        ``"scrobust_pancreas"`` (the 10 pancreas cell-type lists of scRobust's README),
        ``"sctype"`` (ScTypeDB positive markers; needs ``tissue``).
    tissue
        Tissue of the sc-type database (e.g. ``"Immune system"``, ``"Pancreas"``).

    Returns
    -------
    ``dict`` mapping set names to lists of gene symbols (human or mouse, as in the file).

    Raises
    ------
    FileNotFoundError
        If the file is not found (names the file and ``SCTORCH_DATA_DIR``).
    ValueError
        If the file format is not recognised, ``tissue`` is needed and missing, or a set
        name occurs twice (see :func:`read_gmt`; for JSON, a repeated key or pegasus
        cell-type name).
    """
    p = Path(name)
    if not p.exists():
        rel = _ALIASES.get(str(name).lower(), str(name))
        base = data_dir()
        if base is not None and not (base / "gene_sets" / rel).exists():
            matches = sorted((base / "gene_sets").glob(f"*/{rel}*"))
            if len(matches) == 1:
                rel = str(matches[0].relative_to(base / "gene_sets"))
        p = _path(f"gene_sets/{rel}")
    if p.suffix.lower() == ".gmt":
        return read_gmt(p)
    if p.suffix.lower() == ".json":
        return _read_json(p, tissue)
    raise ValueError(f"{p}: gene sets must be a .gmt or .json file.")
