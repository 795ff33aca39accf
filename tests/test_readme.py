"""The README's examples run as written and print the figures the README quotes.

Each ```python block of README.md runs in a fresh interpreter in an empty folder that
already holds a file of every name the block writes (so a second run of an example,
as a user makes it, works too). The figures quoted in the prose after each block are
read from the README and compared with what the block prints.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```\n(.*?)(?=^#{1,3} |^```)", re.S | re.M)
HEADING = re.compile(r"^### (.+)$", re.M)
# calls that write a file named by a string literal: save("x"), write_h5ad("x"), savefig("x")
WRITES = re.compile(r"\.(?:save|write_h5ad|write|savefig)\(\s*[\"']([^\"']+)[\"']")


def _examples() -> dict[str, tuple[str, str]]:
    """``{heading: (code, prose after the block)}`` for each python block of the README."""
    text = README.read_text(encoding="utf-8")
    out = {}
    for m in BLOCK.finditer(text):
        headings = HEADING.findall(text[: m.start()])
        out[headings[-1] if headings else "?"] = (m.group(1), m.group(2))
    return out


EXAMPLES = _examples()


def _example(prefix: str) -> tuple[str, str]:
    found = [k for k in EXAMPLES if k.startswith(prefix)]
    assert len(found) == 1, f"README.md has no single example headed {prefix!r}: {list(EXAMPLES)}"
    return EXAMPLES[found[0]]


def _quoted(prose: str, pattern: str, what: str) -> tuple[str, ...]:
    m = re.search(pattern, " ".join(prose.split()))  # line breaks of the prose as spaces
    assert m, f"the README no longer quotes {what} (pattern {pattern!r}) after its example"
    return m.groups()


def _run(code: str, cwd: Path) -> str:
    """Run one block as a script in ``cwd``; returns what it printed (fails on an error)."""
    for name in WRITES.findall(code):  # as after a first run: the file is already there
        (cwd / name).write_bytes(b"left by an earlier run")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="default")
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    took = time.perf_counter() - t0
    print(f"example ran in {took:.0f} s\n{proc.stdout}")
    assert proc.returncode == 0, f"the README example failed:\n{proc.stderr[-4000:]}"
    # no warning raised at the README's own lines (sctorch points its FutureWarnings for
    # renamed keywords and its warnings for unused settings there) or inside sctorch
    own = [
        line
        for line in proc.stderr.splitlines()
        if re.match(r"(<string>|.*[/\\]sctorch[/\\].*?):\d+: \w*Warning:", line)
    ]
    assert not own, "the README example warns:\n" + "\n".join(own)
    return proc.stdout


def _close(got: float, quoted: float, tol: float, what: str) -> None:
    assert abs(got - quoted) <= tol, f"{what}: the README says {quoted}, the example prints {got}"


def test_the_readme_has_its_three_examples():
    assert len(EXAMPLES) == 3, list(EXAMPLES)
    for prefix in ("TCER", "stImpute", "scRobust"):
        _example(prefix)


def test_tcer_example(tmp_path):
    code, prose = _example("TCER")
    observed, tcer = map(
        float, _quoted(prose, r"(\d\.\d+) observed, (\d\.\d+) after TCER", "Pearson")
    )
    out = _run(code, tmp_path)
    got = dict(re.findall(r"^(observed|TCER)\s+(-?\d\.\d+)$", out, re.M))
    assert set(got) == {"observed", "TCER"}, out
    _close(float(got["observed"]), observed, 0.002, "mean gene Pearson, observed")
    _close(float(got["TCER"]), tcer, 0.01, "mean gene Pearson after TCER")
    assert (tmp_path / "tcer_intestine.safetensors").stat().st_size > 1000  # replaced


def test_stimpute_example(tmp_path):
    code, prose = _example("stImpute")
    low, high = map(float, _quoted(prose, r"measurement: (\d\.\d+)–(\d\.\d+)", "the range"))
    out = _run(code, tmp_path).splitlines()
    per_gene = ast.literal_eval(out[0])
    assert list(per_gene) == ["eve", "ftz", "hb", "Kr", "odd"], out[0]
    _close(min(per_gene.values()), low, 0.011, "lowest held-out gene Pearson")
    _close(max(per_gene.values()), high, 0.011, "highest held-out gene Pearson")
    assert out[1].startswith("(3039, 25) ["), out[1]


def test_scrobust_example(tmp_path):
    code, prose = _example("scRobust")
    percent, printed = _quoted(
        prose, r"(\d+(?:\.\d+)?) % of STIM cells.*?prints (\d\.\d+)", "accuracy"
    )
    top = _quoted(prose, r"(\w+) tops the B-cell attention markers", "the top B marker")[0]
    assert float(percent) == pytest.approx(100 * float(printed), abs=0.05)
    out = _run(code, tmp_path).splitlines()
    _close(float(out[0]), float(printed), 0.015, "STIM accuracy")
    table = [line.split() for line in out[1:] if line.strip()]
    assert table[0][:2] == ["names", "scores"], out
    assert table[1][1] == top, f"the top B-cell marker is {table[1][1]}, the README says {top}"
