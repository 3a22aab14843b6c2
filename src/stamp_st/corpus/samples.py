"""The samples table, the input of a corpus build: one row per sample (slide section) to read.

Columns: ``path`` (required), ``format`` (``spaceranger|hest|her2st|h5ad``, empty = detect), ``section``
(a sample inside a multi-sample folder, e.g. her2st ``B1``), ``slide_id`` (optional; default the section or
the file stem; it names the shards, so it must be unique and file-name safe), ``organ``, ``study``,
``um_per_px`` (overrides the slide's pixel size), ``image_path`` (optional), ``split``
(``train|val|test``; default ``train``). TSV, CSV or JSON (a list of objects) are read; relative paths are
resolved against the table's folder so that a samples table travels with its data. (Not to be confused with
a built corpus's ``manifest.json``: ``corpus.layout``.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import DataNotFoundError, StampInputError, require_file

SPLITS = ("train", "val", "test")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class SampleEntry:
    path: str
    format: str = ""
    section: str = ""
    slide_id: str = ""
    organ: str = ""
    study: str = ""
    um_per_px: float | None = None
    image_path: str = ""
    split: str = "train"

    def source_key(self) -> tuple[str, str, str]:
        """Identity of the input: the same (path, format, section) listed twice is a duplicate slide."""
        return (str(Path(self.path).resolve()), self.format, self.section)

    def to_json(self) -> dict:
        return asdict(self)


def safe_slide_id(text: str) -> str:
    """A file-name and WebDataset-key safe id (no dots, slashes or spaces)."""
    out = _SAFE_ID.sub("_", str(text)).strip("_")
    return out or "slide"


def _default_slide_id(path: str, section: str) -> str:
    if section:
        return safe_slide_id(section)
    name = Path(path).name
    for suffix in (".h5ad", ".h5", ".tsv.gz", ".tsv", ".csv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_slide_id(name)


def _clean(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def entries_from_records(records: Iterable[Mapping], base_dir: str | Path | None = None,
                         source: str | Path | None = None) -> list[SampleEntry]:
    """Validate samples rows (dicts) into entries; relative paths are taken from ``base_dir``."""
    known = {f.name for f in fields(SampleEntry)}
    out: list[SampleEntry] = []
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
        raise StampInputError(f"the samples table must list rows, got {type(records).__name__}", source,
                              hint='a JSON samples table is a list of objects: [{"path": ..., "format": ...}, ...]')
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise StampInputError(f"row {i} is not an object of columns (got {type(rec).__name__})", source,
                                  hint='each row is {"path": ..., "format": ..., "section": ...}')
        unknown = set(rec) - known
        if unknown:
            raise StampInputError(f"row {i}: unknown samples-table columns {sorted(unknown)}", source,
                                  hint=f"allowed columns: {sorted(known)}")
        path = _clean(rec.get("path"))
        if not path:
            raise StampInputError(f"row {i}: empty 'path'", source, hint="every row needs the sample's path")
        p = Path(path).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        if not p.exists():
            raise DataNotFoundError(f"row {i}: sample path does not exist: {p}", source,
                                    hint="fix the path or remove the row")
        image = _clean(rec.get("image_path"))
        if image and not Path(image).is_absolute() and base_dir is not None:
            image = str(Path(base_dir) / image)
        um = _clean(rec.get("um_per_px"))
        try:
            um_val = float(um) if um else None
        except ValueError as err:
            raise StampInputError(f"row {i}: um_per_px {um!r} is not a number", source) from err
        if um_val is not None and not (um_val > 0):
            raise StampInputError(f"row {i}: um_per_px must be > 0 (got {um_val})", source)
        split = _clean(rec.get("split")) or "train"
        if split not in SPLITS:
            raise StampInputError(f"row {i}: split {split!r} is not one of {SPLITS}", source)
        section = _clean(rec.get("section"))
        slide_id = _clean(rec.get("slide_id")) or _default_slide_id(path, section)
        if safe_slide_id(slide_id) != slide_id:
            raise StampInputError(f"row {i}: slide_id {slide_id!r} has characters other than letters, digits, "
                                  "'_' and '-'", source, hint=f"use {safe_slide_id(slide_id)!r}")
        out.append(SampleEntry(path=str(p), format=_clean(rec.get("format")), section=section,
                               slide_id=slide_id, organ=_clean(rec.get("organ")), study=_clean(rec.get("study")),
                               um_per_px=um_val, image_path=image, split=split))
    return out


def read_samples(path: str | Path) -> list[SampleEntry]:
    """Read a TSV/CSV/JSON samples table."""
    import pandas as pd

    path = require_file(path, "samples table",
                        hint="write one with columns path, format, section, split (see docs/corpus.md)")
    try:
        if path.suffix.lower() == ".json":
            from ..io_utils import read_json

            records = read_json(path, "samples table")
            if isinstance(records, dict):
                records = records.get("samples", [])
        else:
            sep = "," if path.suffix.lower() == ".csv" else "\t"
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
            records = df.to_dict(orient="records")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise StampInputError(f"cannot parse the samples table ({err})", path) from err
    entries = entries_from_records(records, base_dir=path.parent, source=path)
    if not entries:
        raise StampInputError("the samples table lists no samples", path)
    return entries


def write_samples(entries: Iterable[SampleEntry], path: str | Path) -> Path:
    """Write entries as TSV (or JSON when the name ends in .json), atomically."""
    import pandas as pd

    from ..io_utils import atomic_write_json, atomic_write_text

    path = Path(path)
    rows = [e.to_json() for e in entries]
    if path.suffix.lower() == ".json":
        atomic_write_json(path, rows)
    else:
        df = pd.DataFrame(rows, columns=[f.name for f in fields(SampleEntry)])
        atomic_write_text(path, df.to_csv(sep="," if path.suffix.lower() == ".csv" else "\t", index=False))
    return path


def _her2st_section_names(root: Path) -> list[str]:
    try:
        from ..readers import her2st_sections  # type: ignore[attr-defined]

        return [str(s) for s in her2st_sections(root)]
    except ImportError:
        return sorted(p.name.split(".")[0] for p in (root / "ST-cnts").glob("*.tsv.gz"))


def her2st_samples(root: str | Path, sections: Iterable[str] | None = None,
                    split: str | Mapping[str, str] | Callable[[str], str] = "train",
                    with_image_only: bool = False, out: str | Path | None = None) -> list[SampleEntry]:
    """Entries for the her2st folder (``ST-cnts``, ``ST-spotfiles``, ``ST-imgs``).

    ``split``: one split for all, a mapping section -> split (missing sections: ``train``), or a function.
    ``with_image_only`` keeps the sections with an H&E image (what a paired corpus can use).
    """
    root = Path(root)
    if not (root / "ST-cnts").is_dir():
        raise DataNotFoundError("not a her2st folder (no ST-cnts/)", root,
                                hint="point to the folder that holds ST-cnts, ST-spotfiles and ST-imgs")
    names = _her2st_section_names(root)
    if sections is not None:
        wanted = [str(s) for s in sections]
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise StampInputError(f"her2st sections not found: {missing}", root, hint=f"available: {names}")
        names = wanted
    if with_image_only:
        names = [s for s in names if (root / "ST-imgs" / s[0] / s).is_dir()]
    rows = []
    for s in names:
        sp = split if isinstance(split, str) else (split(s) if callable(split) else split.get(s, "train"))
        rows.append({"path": str(root), "format": "her2st", "section": s, "slide_id": f"her2st_{s}",
                     "organ": "breast", "study": "her2st", "split": sp})
    entries = entries_from_records(rows, source=root)
    if out is not None:
        write_samples(entries, out)
    return entries
