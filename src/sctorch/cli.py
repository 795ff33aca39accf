"""The ``sctorch`` command: ``sctorch demo`` and, later, pipeline subcommands on ``.h5ad`` files."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("sctorch")

DEMO_PARTS = ("tcer", "stimpute", "scrobust")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the bundled data and write ``summary.md`` to ``--out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = ["# sctorch demo", ""]
    for name in DEMO_PARTS:
        try:
            part = importlib.import_module(f"sctorch._demos.{name}")
        except ModuleNotFoundError:
            continue
        logger.info("demo: %s", name)
        lines += part.run(out, quick=args.quick, device=args.device)
        lines.append("")
    lines.append(f"\nfinished in {time.perf_counter() - t0:.1f} s")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"results written to {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sctorch`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sctorch",
        description="Deep learning on gene-gene relationships for sparse single-cell and "
                    "spatial data (TCER, stImpute, scRobust).")
    parser.add_argument("--version", action="version", version=f"sctorch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the methods on bundled real data",
                          description="Run sctorch on the bundled real data and write results, "
                                      "figures and summary.md to --out.")
    demo.add_argument("--out", default="sctorch_demo", help="output folder (default: %(default)s)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda, mps, else cpu)")
    demo.add_argument("--quick", action="store_true", help="smaller settings, for a smoke test")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sctorch`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        print(f"sctorch {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
