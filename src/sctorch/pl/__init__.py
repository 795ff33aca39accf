"""Plotting in the Scanpy ``pl`` style."""

from ._genomap import genomap

__all__ = ["genomap"]
