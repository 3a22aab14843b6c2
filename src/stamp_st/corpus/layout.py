"""The layout of a built corpus folder (its file names) and the reader of its finished ``manifest.json``.

One owner for the output layout: the build writes these names, every reader (gene means, verification)
reads them from here."""

from __future__ import annotations

from pathlib import Path

from ..errors import StampInputError

FORMAT_VERSION = 1
DONE_SUFFIX = ".done.json"
MEANS_SUFFIX = ".means.npy"
MANIFEST_NAME = "manifest.json"
GENE_MEANS_NAME = "gene_means.tsv"


def read_finished_manifest(corpus_dir: str | Path) -> dict:
    """``manifest.json`` of a finished corpus (it is written last, so its presence means finished)."""
    mpath = Path(corpus_dir) / MANIFEST_NAME
    if not mpath.is_file():
        raise StampInputError("no manifest.json: not a finished corpus", corpus_dir,
                              hint="run `stamp-st build-corpus` (again) to finish it")
    from ..io_utils import read_json

    return read_json(mpath, "corpus manifest", hint="the file is damaged: copy the corpus again or re-run build-corpus")
