"""Preprocessing: the evaluation protocol's observation model and reference selection."""

from ._simulation import select_reference, simulate_efficiency_loss

__all__ = ["select_reference", "simulate_efficiency_loss"]
