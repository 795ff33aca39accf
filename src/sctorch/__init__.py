"""sctorch: deep learning on gene-gene relationships for sparse single-cell and spatial data.

Import as ``import sctorch as sct``; the API follows Scanpy's ``pp`` / ``tl`` / ``pl``
convention. Heavy libraries (torch, POT, torch-geometric, fair-esm, squidpy) are
imported only when a function needs them.
"""

from importlib import metadata as _metadata

from . import datasets, metrics, models, pl, pp, tl

try:
    __version__ = _metadata.version("sctorch")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "datasets", "metrics", "models", "pl", "pp", "tl"]
