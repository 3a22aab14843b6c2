"""evaluation: held-out-slide tasks (probe, clustering, expression prediction, retrieval, ABMIL), 95%
intervals, embedding sources (files in ``stamp_st.embedding_file``'s format) and the HTML report. Entry point:
:func:`evaluate_sources`. Tasks are registered in ``evaluation.registry``. Exports load on first use, so the CLI
can read the registry without numpy."""

import importlib

__all__ = ["evaluate_sources", "read_source"]
_EXPORTS = {"read_source": "sources", "evaluate_sources": "tasks"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
