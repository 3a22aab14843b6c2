"""Options shared by several commands."""

from __future__ import annotations

import json


def add_set_option(p, example: str = "lr=3e-4") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help=f"override a trainer setting, e.g. --set {example} (repeatable)")


def ranged_type(kind=float, rng=None):
    """An argparse ``type=`` that parses ``kind`` and checks it against a ``config_types.Range`` (every number
    finite), so a bad option stops the command before any work with ``argument --X: ...`` and exit 2."""
    import argparse

    from ..config_types import Range

    rng = rng or Range()

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        problem = rng.problem(v)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def device_type(text: str) -> str:
    """argparse ``type=`` of ``--device``: ``stamp_st.devices.check_device`` as an option error."""
    import argparse

    from ..devices import check_device
    from ..errors import StampInputError

    try:
        return check_device(text)
    except StampInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_options(cls, values: dict) -> dict:
    """Values given as options for fields of config dataclass ``cls`` (None: not given), checked for type and
    range with the option named, before they are merged with a config file that would otherwise be blamed."""
    from ..config_types import COMMAND_LINE, check_config_types

    given = {k: v for k, v in values.items() if v is not None}
    check_config_types(cls, given, COMMAND_LINE, "option")
    return given


def parse_set_overrides(items: list[str], example: str = "lr=3e-4", cls=None) -> dict:
    """``["lr=3e-4", "strategy=fsdp"]`` -> ``{"lr": 0.0003, "strategy": "fsdp"}`` (JSON where it parses);
    with ``cls`` (a config dataclass) the known keys are checked for type and range, blamed on ``--set``."""
    from ..config_types import check_config_types
    from ..errors import StampInputError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise StampInputError(f"--set {item!r} is not KEY=VALUE", hint=f"e.g. --set {example}")
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            out[key] = value
    if cls is not None:
        check_config_types(cls, out, "--set", "trainer setting")
    return out


def add_pipeline_options(p, why: str) -> None:
    """``--pipeline`` / ``--magnification`` of the commands that tokenize and crop; ``why``: when to pick released."""
    p.add_argument("--pipeline", choices=["default", "released"], default="default",
                   help=f"released: the authors' tokens and crops (BGR, 224 px at native resolution), {why}")
    from ..config_types import MAGNIFICATION

    p.add_argument("--magnification", type=ranged_type(float, MAGNIFICATION), default=None,
                   help="--pipeline released: the slides' magnification as in HEST's metadata (patch side "
                        "2 x 112 x mag / 20 px; default 112 px, the release's default)")
