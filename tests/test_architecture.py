"""The layout rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sctorch"
METHODS = ("genomap", "tcer", "stimpute", "scrobust", "models", "tl", "pp")


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "_data" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Absolute ``sctorch.*`` / third-party names imported by a module (relative resolved)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    out.update(f"{mod}.{a.name}" for a in node.names)
                else:
                    out.add(mod)
            else:
                out.add(node.module or "")
    return out


def _touches(imports: set[str], targets) -> list[str]:
    return sorted(i for i in imports for t in targets if i == t or i.startswith(t + "."))


@pytest.mark.parametrize(
    "path", [p for p in _modules() if p.name == "_module.py"], ids=lambda p: str(p.relative_to(SRC))
)
def test_torch_modules_know_no_anndata(path):
    bad = _touches(_imports(path), ["anndata", "scanpy", "sctorch.tl", "sctorch.pp"])
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_no_method_code_imports_the_cli():
    for path in _modules():
        if path.name in ("cli.py", "__main__.py"):
            continue
        bad = _touches(_imports(path), ["sctorch.cli"])
        assert not bad, f"{path.relative_to(SRC)} imports the CLI"


@pytest.mark.parametrize("name", ["metrics.py", "_utils.py", "_keys.py"])
def test_shared_layers_import_no_method(name):
    bad = _touches(_imports(SRC / name), [f"sctorch.{m}" for m in METHODS])
    assert not bad, f"{name} imports method code {bad}"


def test_module_sizes_and_one_backward_call_site():
    sizes = {
        p.relative_to(SRC): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules()
    }
    # 600 lines before `ruff format` (issue 22), which writes long calls one argument per
    # line and made the same code about 1.5 times as many lines: 1,000 after it
    big = {str(p): n for p, n in sizes.items() if n > 1000}
    assert not big, f"modules over 1,000 lines: {big}"
    sites = [
        str(p.relative_to(SRC))
        for p in _modules()
        for line in p.read_text(encoding="utf-8").splitlines()
        if re.search(r"\.backward\(", line) and not line.lstrip().startswith("#")
    ]
    assert sites == ["models/_fit.py"], f".backward( call sites: {sites}"
