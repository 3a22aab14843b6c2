"""``stamp-st convert-released IN OUT``: the authors' released STAMP weights (``pytorch_model.bin`` or a
Lightning ``.ckpt``) -> a stamp-st checkpoint folder (``model.safetensors`` + ``config.json``, kind ``stamp``,
released mode: their gene pooling and CSP pooling). Embed with ``--pipeline released`` to feed it the release's
own tokens and crops."""

from __future__ import annotations

EXAMPLES = """
stamp-st convert-released pytorch_model.bin stamp_released
stamp-st embed stamp_released /data/her2st --section B1 --pipeline released --out B1.h5ad
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("convert-released", help="convert the released STAMP weights to a stamp-st checkpoint",
                              description=__doc__.splitlines()[0])
    p.add_argument("input", metavar="IN", help="released pytorch_model.bin / .ckpt / .safetensors")
    p.add_argument("output", metavar="OUT", help="checkpoint folder to write: new or empty (an existing stamp-st checkpoint only with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it already holds a stamp-st checkpoint (never a folder with other files)")
    p.add_argument("--vocab", default=None,
                   help="gene vocabulary TSV (default: the released vocabulary in the data directory)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.released import convert_released
    from ..preprocessing.vocab import GeneVocabulary

    vocab = GeneVocabulary.from_tsv(args.vocab) if args.vocab else None
    out = convert_released(args.input, args.output, vocabulary=vocab, overwrite=args.overwrite)
    if args.json:
        import json

        print(json.dumps({"checkpoint": str(out)}))
        return 0
    print(f"wrote {out} (load it with stamp_st.models.stamp.load_stamp)")
    return 0
