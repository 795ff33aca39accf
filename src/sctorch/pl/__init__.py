"""Plotting in the Scanpy ``pl`` style."""

__all__: list[str] = []
