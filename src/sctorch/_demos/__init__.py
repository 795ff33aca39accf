"""The parts of ``sctorch demo``: one module per method, each with ``run(out, *, quick, device)``.

Each ``run`` works on bundled data only, writes its files into ``out`` and returns the
Markdown lines of its part of ``summary.md``.
"""
