"""Aggregation, statistics and tables behind `harness report`.

Imports are lazy so that `import analysis` does not pull in pandas/pyarrow until used.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_results": "aggregate", "summarise": "aggregate", "ResultsError": "aggregate",
    "wilson_interval": "stats", "mean_accuracy_interval": "stats", "clustered_interval": "stats",
    "render_text": "tables", "render_markdown": "tables", "render_csv": "tables",
    "render_latex": "tables", "build_report": "report", "default_out_dir": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
