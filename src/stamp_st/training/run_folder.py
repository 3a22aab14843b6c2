"""A training run's folder, for both stages: ``checkpoints/step-XXXXXXX/`` (each one loads alone),
``checkpoints/latest`` (the name of the newest finished one), ``metrics.csv`` (step, epoch, split, metric,
value), ``tb/`` (TensorBoard), and the saved configs (``trainer_config.json``, ``pretrain_config.json``,
``align_config.json``). ``RunFolder`` is the one place that knows this layout: the engine writes through it,
and whoever needs "the latest checkpoint" of a run asks it."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ..errors import StampInputError
from ..io_utils import atomic_write_json, atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.pt"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tb"
CONFIG_FILES = ("trainer_config.json", "pretrain_config.json", "align_config.json")
# what a run folder holds (the trainer's files and the commands' configs); metrics.csv is truncated on a restart
RUN_FOLDER_ENTRIES = frozenset({CHECKPOINTS, METRICS_CSV, TENSORBOARD, *CONFIG_FILES,
                                "folds", "folds.json"})  # folds: align --folds
METRICS_HEADER = ["step", "epoch", "split", "metric", "value"]


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse a run folder holding files a training run did not write (it would overwrite or truncate them)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise StampInputError("the run folder (--out) exists and is not a folder", run_dir,
                              hint="give a new folder name")
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if p.name not in RUN_FOLDER_ENTRIES and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise StampInputError(f"the run folder holds files stamp-st did not write ({shown})", run_dir,
                              hint="give a new or empty folder as --out (or an earlier run's folder to resume it)")


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    # ------------------------------------------------------------------ checkpoints
    def latest(self, resumable: bool = False) -> Path | None:
        """The checkpoint ``latest`` names (None when there is no pointer). ``resumable``: one holding the trainer state,
        falling back to the newest such step when the pointer is missing or stale (a kill between the two
        writes)."""
        root = self.checkpoints
        ptr = root / LATEST
        if ptr.is_file():
            p = root / ptr.read_text().strip()
            if not resumable or (p / TRAINER_STATE).is_file():
                return p
        if not resumable:
            return None
        steps = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file()) if root.is_dir() else []
        return steps[-1] if steps else None

    def set_latest(self, name: str) -> None:
        atomic_write_text(self.checkpoints / LATEST, name + "\n")

    def prune(self, keep: int) -> None:
        """Delete all but the ``keep`` newest step folders (only those: nothing else in the run is touched)."""
        steps = sorted(p for p in self.checkpoints.glob("step-*") if p.is_dir())
        for p in steps[:-max(int(keep), 1)]:
            shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ configs and metrics
    def write_config(self, name: str, config: dict) -> Path:
        if name not in CONFIG_FILES:
            raise ValueError(f"{name} is not a run-folder config file ({', '.join(CONFIG_FILES)})")
        path = self.path / name
        atomic_write_json(path, config)
        return path

    def append_metrics(self, step: int, epoch: int, split: str, metrics: dict) -> None:
        new = not self.metrics_csv.exists()
        with open(self.metrics_csv, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(METRICS_HEADER)
            for k, v in metrics.items():
                w.writerow([step, epoch, split, k, f"{float(v):.6g}"])

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
        path = self.metrics_csv
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(keep) != len(rows):
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerows(keep)


def latest_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A run folder's latest checkpoint, or the path itself when it is not a run folder (a checkpoint folder)."""
    return RunFolder(run_or_checkpoint).latest() or Path(run_or_checkpoint)
