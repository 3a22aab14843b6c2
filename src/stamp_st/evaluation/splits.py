"""Held-out-slide splits. Spots of one slide are never split between train and test: neighbouring
spots share tissue and batch effects, so a spot-level split overstates every metric (a criticism the
paper received)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import StampInputError


@dataclass
class Fold:
    name: str  # the held-out slide(s), joined by "+"
    train_idx: np.ndarray
    test_idx: np.ndarray


def leave_one_slide_out(slide_ids: Sequence[str]) -> list[Fold]:
    """One fold per slide: that slide is the test set, all other slides train."""
    s = np.asarray(slide_ids).astype(str)
    slides = list(dict.fromkeys(s.tolist()))
    if len(slides) < 2:
        raise StampInputError(
            f"leave-one-slide-out needs at least 2 slides, got {len(slides)} ({slides})",
            hint="evaluate embeddings of several slides (sections) together, or pass a given split",
        )
    return [Fold(sl, np.flatnonzero(s != sl), np.flatnonzero(s == sl)) for sl in slides]


def given_split(slide_ids: Sequence[str], test_slides: Sequence[str]) -> list[Fold]:
    """A single fold: the named slides are held out, the rest train."""
    s = np.asarray(slide_ids).astype(str)
    test = [str(t) for t in test_slides]
    missing = sorted(set(test) - set(s.tolist()))
    if missing:
        raise StampInputError(
            f"test slides {missing} are not among the evaluated slides {sorted(set(s.tolist()))}",
            hint="check --test-slides against obs['slide_id'] of the embedding files",
        )
    is_test = np.isin(s, test)
    if is_test.all():
        raise StampInputError("every slide is a test slide; nothing is left to train on",
                              hint="hold out fewer slides")
    return [Fold("+".join(test), np.flatnonzero(~is_test), np.flatnonzero(is_test))]


def make_folds(slide_ids: Sequence[str], test_slides: Sequence[str] | None = None) -> list[Fold]:
    return leave_one_slide_out(slide_ids) if not test_slides else given_split(slide_ids, test_slides)


def slide_units(slide_ids: Sequence[str], keep: np.ndarray | None = None) -> list[Fold]:
    """One unit per slide (first-seen order) for tasks scored within each slide (clustering, retrieval):
    ``test_idx`` = the slide's spots (where ``keep``), nothing to train on."""
    s = np.asarray(slide_ids).astype(str)
    keep = np.ones(len(s), dtype=bool) if keep is None else keep
    return [Fold(sl, np.empty(0, dtype=np.int64), np.flatnonzero((s == sl) & keep)) for sl in dict.fromkeys(s.tolist())]


def score_folds(folds: Sequence[Fold], score: Callable[[Fold], dict | str], metrics: Sequence[str],
                key: str = "fold") -> dict:
    """The one fold loop of every task: ``score(fold)`` returns that fold's row (its metrics and counts) or
    the reason it is skipped (a string). Returns ``{"metrics": {m: mean [95% t-interval] over the scored
    folds}, "per_fold": rows}``, each row named by ``key`` (``fold``, or ``slide`` for per-slide units)."""
    from .stats import summarise

    rows = []
    for fold in folds:
        out = score(fold)
        rows.append({key: fold.name, "skipped": out} if isinstance(out, str) else {key: fold.name, **out})
    ok = [r for r in rows if "skipped" not in r]
    return {"metrics": {m: summarise([r[m] for r in ok]) for m in metrics}, "per_fold": rows}
