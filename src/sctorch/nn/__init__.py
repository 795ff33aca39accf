"""Torch modules only; they know nothing of AnnData (``tl`` does the AnnData in/out)."""
