"""Options shared by several commands."""

from __future__ import annotations

import json


def add_set_option(p, example: str = "lr=3e-4") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help=f"override a trainer setting, e.g. --set {example} (repeatable)")


def parse_set_overrides(items: list[str], example: str = "lr=3e-4") -> dict:
    """``["lr=3e-4", "strategy=fsdp"]`` -> ``{"lr": 0.0003, "strategy": "fsdp"}`` (JSON where it parses)."""
    from ..errors import StampInputError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise StampInputError(f"--set {item!r} is not KEY=VALUE", hint=f"e.g. --set {example}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_pipeline_options(p, why: str) -> None:
    """``--pipeline`` / ``--magnification`` of the commands that tokenize and crop; ``why``: when to pick released."""
    p.add_argument("--pipeline", choices=["default", "released"], default="default",
                   help=f"released: the authors' tokens and crops (BGR, 224 px at native resolution), {why}")
    p.add_argument("--magnification", type=float, default=None,
                   help="--pipeline released: the slides' magnification as in HEST's metadata (patch side "
                        "2 x 112 x mag / 20 px; default 112 px, the release's default)")
