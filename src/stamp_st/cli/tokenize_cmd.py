"""``stamp-st tokenize``: a sample's spots as rank-ordered gene tokens (METHOD.md §3) in one ``.npz``.

Spots with no count in the vocabulary would be all padding: they are not written as tokens, their ids are
listed in ``empty_spot_ids`` and reported on stderr."""

from __future__ import annotations

import sys

from .inspect_cmd import add_sample_arguments

EXAMPLES = """
stamp-st tokenize /data/her2st --section B1 --out B1_tokens.npz
"""


def register(subparsers) -> None:
    from ..config_types import CONTEXT
    from ..preprocessing.tokenizer import DEFAULT_CONTEXT
    from .options import ranged_type

    p = subparsers.add_parser("tokenize", help="write a sample's rank-ordered gene tokens to an .npz",
                              description=__doc__.splitlines()[0])
    add_sample_arguments(p)
    p.add_argument("--out", required=True, help="output .npz (written atomically)")
    p.add_argument("--context", type=ranged_type(int, CONTEXT), default=DEFAULT_CONTEXT, help="tokens per spot (default %(default)s)")
    p.add_argument("--unrounded-means", action="store_true",
                   help="divide by the real per-gene means instead of the release's rounded integers")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.add_argument("--pipeline", choices=["default", "released"], default="default",
                   help="released: the authors' tokens exactly (their symbol map only, numpy's tie order), for "
                        "the released weights")
    p.set_defaults(func=run)


def tokenize_sample(adata, vocab, context: int, rounded_means: bool = True, pipeline: str = "default") -> dict:
    """Arrays of the output file: non-empty spots only, empty ones listed."""
    import json

    import numpy as np

    from ..preprocessing.tokenizer import RankTokenizer
    from ..preprocessing.vocab import check_vocabulary_coverage, coverage_report
    from ..readers.sample_meta import SampleMeta
    from .inspect_cmd import gene_mapping

    if pipeline == "released":
        from ..preprocessing.release_pipeline import ReleaseTokenizer

        tokenizer = ReleaseTokenizer(vocab, context=context)
        tok, mapping = tokenizer.tokenize_sample(adata.X, list(adata.var_names))
    else:
        mapping = gene_mapping(adata, vocab)
        tokenizer = RankTokenizer(vocab, context=context, rounded_means=rounded_means)
        tok = tokenizer.tokenize(adata.X, mapping)
    keep = ~tok.empty
    spot_ids = np.asarray(adata.obs_names, dtype=str)
    cov = coverage_report(adata.X, mapping, adata.obs_names)
    gene_ids = adata.var["gene_ids"].astype(str).tolist() if "gene_ids" in adata.var else None
    check_vocabulary_coverage(cov, list(map(str, adata.var_names)), gene_ids,
                              SampleMeta.of(adata).source_path or None)
    cov.pop("per_spot")
    return {
        "tokens": tok.tokens[keep].astype(np.int32),
        "spot_ids": spot_ids[keep],
        "n_genes": tok.n_genes[keep].astype(np.int32),
        "empty_spot_ids": spot_ids[~keep],
        "vocab_checksum": np.asarray(vocab.checksum),
        "tokenizer_config": np.asarray(json.dumps(tokenizer.config())),
        "sample_id": np.asarray(SampleMeta.of(adata).sample_id),
        "coverage": np.asarray(json.dumps(cov)),
    }


def run(args) -> int:
    import numpy as np

    from ..errors import StampInputError
    from ..io_utils import atomic_path, check_output_file
    from .inspect_cmd import load_vocab, read_sample_from_args

    check_output_file(args.out)
    adata = read_sample_from_args(args)
    vocab = load_vocab(args.vocab)
    if args.pipeline == "released" and args.unrounded_means:
        raise StampInputError("--unrounded-means is not the release's rule", hint="drop it with --pipeline released")
    arrays = tokenize_sample(adata, vocab, args.context, rounded_means=not args.unrounded_means,
                             pipeline=args.pipeline)
    n_empty = len(arrays["empty_spot_ids"])
    if n_empty:
        shown = ", ".join(arrays["empty_spot_ids"][:10]) + (" ..." if n_empty > 10 else "")
        print(f"stamp-st tokenize: {n_empty} of {adata.n_obs} spots have no count in the vocabulary and were "
              f"not written (listed in empty_spot_ids): {shown}", file=sys.stderr)
    if len(arrays["spot_ids"]) == 0:
        raise StampInputError("no spot has a count in the vocabulary: nothing to write", args.sample,
                              hint="check that the gene names are symbols or Ensembl ids of the vocabulary's "
                                   "species (`stamp-st inspect` shows the coverage)")
    with atomic_path(args.out) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    t = arrays["tokens"]
    if args.json:
        import json

        print(json.dumps({"out": str(args.out), "n_spots": int(t.shape[0]), "context": int(t.shape[1]),
                          "n_empty_spots": n_empty, "vocabulary_checksum": vocab.checksum,
                          "median_genes_per_spot": int(np.median(arrays["n_genes"]))}))
        return 0
    print(f"wrote {args.out}: {t.shape[0]} spots x {t.shape[1]} tokens (vocabulary {vocab.checksum}, "
          f"median {int(np.median(arrays['n_genes']))} genes per spot)")
    return 0
