"""Shared core of llqa: the user-error type, model loading with Position Interpolation, result files.

The three product packages (`longqa`, `evals`, `trainer`) build on this one; none of them imports Typer.
"""

__version__ = "0.1.0"
