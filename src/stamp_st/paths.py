"""Where the data lives: one configurable data directory, never committed into the repository.

Resolution order: the ``STAMP_ST_DATA`` environment variable; else ``../shared/data`` next to the current
working directory or next to the repository that holds this package (the project's development layout);
else the download cache (``stamp-st download``: ``$STAMP_ST_DATA_CACHE``, default ``~/.cache/stamp_st/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFoundError

DATA_ENV = "STAMP_ST_DATA"


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    repo = here.parents[2]  # src/stamp_st/paths.py -> repository root
    from .download import cache_dir

    # last: the folder `stamp-st download` fills (her2st/, hest/)
    return [Path.cwd() / ".." / "shared" / "data", repo / ".." / "shared" / "data", cache_dir()]


def data_dir(required: bool = True) -> Path | None:
    """The data directory, or None (``required=False``) when none is configured or present."""
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p.resolve()
        if required:
            raise DataNotFoundError(
                f"{DATA_ENV} points to a folder that does not exist", p,
                hint=f"set {DATA_ENV} to the folder that holds her2st/, vocab/, ... or unset it",
            )
        return None
    for c in _candidates():
        if c.is_dir():
            return c.resolve()
    if required:
        raise DataNotFoundError(
            "no data directory found (looked for ../shared/data)",
            hint=f"set {DATA_ENV}=/path/to/data (the folder with her2st/ and vocab/)",
        )
    return None


def data_path(*parts: str, required: bool = True) -> Path | None:
    """A file or folder inside the data directory, with an actionable error when absent."""
    root = data_dir(required=required)
    if root is None:
        return None
    p = root.joinpath(*parts)
    if not p.exists():
        if required:
            raise DataNotFoundError(
                "not found in the data directory", p,
                hint=f"check {DATA_ENV} (now {root}) or pass the file's path explicitly",
            )
        return None
    return p


def vocab_file() -> Path:
    """The released STAMP gene vocabulary (20,310 tokens, token order of the released weights)."""
    return data_path("vocab", "stamp_gene_vocab.tsv")  # type: ignore[return-value]


def her2st_dir() -> Path:
    return data_path("her2st")  # type: ignore[return-value]
