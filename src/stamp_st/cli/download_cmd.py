"""``stamp-st download``: fetch the public data users start from into the cache folder, once.

Sources: her2st (Andersson et al. 2021, Zenodo record 3957257: counts, spot files, H&E images, clusters,
pathologist labels) and HEST-1k (the Hugging Face dataset MahmoodLab/hest: samples by id, or by a filter on
its metadata table such as organ=Breast; only the folders asked for). Downloads resume after an interruption
and are checksum-verified. Cache folder: $STAMP_ST_DATA_CACHE, default ~/.cache/stamp_st/data."""

from __future__ import annotations

import json
import sys

EXAMPLES = """
stamp-st download her2st
stamp-st download hest --filter organ=Breast --folders st wsis metadata
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("download", help="fetch her2st (Zenodo) or HEST-1k samples (Hugging Face)",
                              description=__doc__)
    p.add_argument("source", choices=("her2st", "hest"), help="her2st: the Zenodo record; hest: HEST-1k samples")
    p.add_argument("--dest", default=None, help="cache folder (default: $STAMP_ST_DATA_CACHE or "
                   "~/.cache/stamp_st/data); data lands in DEST/her2st or DEST/hest")
    p.add_argument("--ids", nargs="+", default=[], help="hest: sample ids (e.g. TENX95 NCBI783)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="hest: keep samples whose metadata column equals VALUE (repeatable, all must hold; "
                   "e.g. organ=Breast, st_technology=Visium)")
    p.add_argument("--folders", nargs="+", default=["st", "wsis", "metadata"],
                   help="hest: which folders of each sample (default: st wsis metadata)")
    p.add_argument("--files", nargs="+", default=None, metavar="PATTERN",
                   help="her2st: only the record's files matching these patterns (default: all)")
    p.add_argument("--base-url", default=None, help="her2st: Zenodo base URL (default: $STAMP_ST_ZENODO_URL or "
                   "https://zenodo.org)")
    p.add_argument("--json", action="store_true", help="print one JSON object (where the data is)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..download import download_her2st, download_hest
    from ..errors import StampInputError

    dest = Path(args.dest) if args.dest else None
    if args.source == "her2st":
        if args.ids or args.filter:
            raise StampInputError("--ids / --filter apply to hest, not her2st")
        root = download_her2st(dest, args.files, args.base_url)
        summary = {"source": "her2st", "path": str(root), "data_dir": str(root.parent)}
    else:
        filters = {}
        for f in args.filter:
            col, sep, value = f.partition("=")
            if not sep or not col:
                raise StampInputError(f"--filter {f!r} is not COLUMN=VALUE")
            filters[col.strip()] = value.strip()
        root, ids = download_hest(args.ids, filters, tuple(args.folders), dest)
        summary = {"source": "hest", "path": str(root), "ids": ids}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['source']}: {summary['path']}", file=sys.stdout)
    return 0
