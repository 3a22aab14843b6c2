"""evaluation: held-out-slide tasks (probe, clustering, expression prediction, retrieval, ABMIL), 95%
intervals, embedding files and the HTML report. Entry point: :func:`evaluate_sources`."""

from .embeddings_io import EmbeddingSet, read_source
from .tasks import evaluate_sources

__all__ = ["EmbeddingSet", "evaluate_sources", "read_source"]
