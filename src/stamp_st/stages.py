"""Finished-stage markers of the multi-stage commands (``demo``, ``reproduce``), in one place: a stage that
finishes writes ``OUT/stages/<name>.json`` (what it returned, and its seconds); a re-run reuses that result and
skips the stage unless it is forced. A stage that was interrupted leaves no marker, so it runs again, and the
long ones (corpus builds, training) resume from their own checkpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from pathlib import Path

from .io_utils import atomic_write_json

STAGES_DIR = "stages"


def stage_marker(out: str | Path, name: str) -> Path:
    return Path(out) / STAGES_DIR / f"{name}.json"


def stage_done(out: str | Path, name: str) -> bool:
    return stage_marker(out, name).is_file()


def run_stage(out: str | Path, name: str, fn: Callable[[], dict | None], force: Collection[str] = (),
              say: Callable[[str], None] = print) -> dict:
    """``fn()`` unless ``name`` finished before (and is not in ``force``); its result, with ``seconds``."""
    marker = stage_marker(out, name)
    if marker.is_file() and name not in force:
        say(f"{name}: done before, reusing ({marker})")
        return json.loads(marker.read_text())
    say(f"{name}: running")
    t0 = time.perf_counter()
    result = fn() or {}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(marker, result)
    say(f"{name}: finished in {result['seconds']:.0f} s")
    return result
