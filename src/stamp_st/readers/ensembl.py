"""Gene naming conventions the readers must recognise (Ensembl ids vs symbols); the vocabulary mapping in
``preprocessing.vocab`` builds on them."""

from __future__ import annotations

import re
from collections.abc import Sequence

ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?(-\d+)?$")


def looks_like_ensembl(names: Sequence[str], min_fraction: float = 0.5) -> bool:
    """True when most names are Ensembl gene ids (ENSG..., ENSMUSG...)."""
    names = [str(n) for n in names]
    if not names:
        return False
    hits = sum(bool(ENSEMBL_RE.match(n)) for n in names)
    return hits / len(names) >= min_fraction
