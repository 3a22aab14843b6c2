"""``stamp-st download``: fetch the public data users start from into the cache folder, once: her2st from
almaan/her2st, the STAMP gene vocabulary from Hanminghao/STAMP, HEST-1k samples from MahmoodLab/hest, each
pinned and every file checked against a checksum recorded in stamp-st.

Sources:
- her2st: Andersson et al. 2021, from the authors' GitHub repository almaan/her2st at a fixed commit (counts,
  spot files, H&E images, expression-cluster labels and names, pathologist labels), laid out as the her2st
  reader reads it (DEST/her2st). --sections fetches only those sections.
- vocab: the released STAMP gene vocabulary, built from the authors' repository Hanminghao/STAMP at a fixed
  commit (src/model.h5ad, src/Visium_mean.npy, src/gene_name_id_dict.pkl) into DEST/vocab.
- hest: HEST-1k samples (the Hugging Face dataset MahmoodLab/hest) by id, or by a filter on its newest
  metadata table such as organ=Breast; only the folders asked for.
Downloads resume after an interruption. Cache folder: $STAMP_ST_DATA_CACHE, default ~/.cache/stamp_st/data."""

from __future__ import annotations

import json
import sys

EXAMPLES = """
stamp-st download her2st
stamp-st download her2st --sections B4 C2 --dest data
stamp-st download vocab
stamp-st download hest --filter organ=Breast --folders st wsis metadata
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("download", help="fetch her2st (GitHub), the STAMP gene vocabulary or HEST-1k samples")
    p.add_argument("source", choices=("her2st", "vocab", "hest"),
                   help="her2st: almaan/her2st; vocab: the released STAMP vocabulary; hest: HEST-1k samples")
    p.add_argument("--dest", default=None, help="cache folder (default: $STAMP_ST_DATA_CACHE or "
                   "~/.cache/stamp_st/data); data lands in DEST/her2st, DEST/vocab or DEST/hest")
    p.add_argument("--sections", nargs="+", default=None, metavar="ID",
                   help="her2st: only these sections (e.g. B4 C2; default: all)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="her2st / vocab: a copy of the source repository's files (URL/data/ST-cnts/B4.tsv.gz, "
                   "URL/src/model.h5ad); default: the pinned raw.githubusercontent.com address")
    p.add_argument("--allow-http", action="store_true",
                   help="accept a plain-http --base-url on another machine (default: https, or http to this one)")
    p.add_argument("--ids", nargs="+", default=[], help="hest: sample ids (e.g. TENX95 NCBI783)")
    p.add_argument("--filter", action="append", default=[], metavar="COLUMN=VALUE",
                   help="hest: keep samples whose metadata column equals VALUE (repeatable, all must hold; "
                   "e.g. organ=Breast, st_technology=Visium)")
    p.add_argument("--folders", nargs="+", default=["st", "wsis", "metadata"],
                   help="hest: which folders of each sample (default: st wsis metadata)")
    p.add_argument("--json", action="store_true", help="print one JSON object (where the data is)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..download import download_her2st, download_hest
    from ..errors import StampInputError

    dest = Path(args.dest) if args.dest else None
    if args.source != "hest" and (args.ids or args.filter):
        raise StampInputError(f"--ids / --filter apply to hest, not {args.source}")
    if args.source != "her2st" and args.sections:
        raise StampInputError(f"--sections applies to her2st, not {args.source}")
    if args.source == "hest" and args.base_url:
        raise StampInputError("--base-url applies to her2st and vocab; HEST goes through huggingface_hub "
                              "(set HF_ENDPOINT for a mirror)")
    if args.source == "her2st":
        root = download_her2st(dest, args.sections, args.base_url, allow_http=args.allow_http)
        summary = {"source": "her2st", "path": str(root), "data_dir": str(root.parent)}
    elif args.source == "vocab":
        vocab = fetch_vocabulary(dest, args.base_url, args.allow_http)
        summary = {"source": "vocab", "path": str(vocab), "data_dir": str(vocab.parent.parent)}
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


def fetch_vocabulary(dest=None, base_url: str | None = None, allow_http: bool = False):
    """The release's raw vocabulary files, then DEST/vocab/stamp_gene_vocab.tsv and stamp_symbol_to_ensembl.tsv
    built from them. Returns the vocabulary file."""
    from pathlib import Path

    from ..download import cache_dir, download_stamp_vocab_files
    from ..preprocessing.vocab import write_release_vocabulary

    out = Path(dest or cache_dir()) / "vocab"
    vocab = write_release_vocabulary(download_stamp_vocab_files(dest, base_url, allow_http), out)
    print(f"vocab: {vocab} (and {vocab.with_name('stamp_symbol_to_ensembl.tsv').name}); the optional human gene "
          "table org.Hs.eg.db_3.16.0_genes.tsv.gz is not fetched: without it a few dozen more symbols stay "
          "unmapped", file=sys.stderr)
    return vocab
