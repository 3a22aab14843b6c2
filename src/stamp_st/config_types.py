"""The one loader of settings (JSON configs, ``--set KEY=JSON``, registered named configs) into config
dataclasses: unknown keys and wrong types are the user's mistake and are reported with the setting's name and
where it came from, not surfacing later as a traceback deep inside training (``"lr": "3e-4"``,
``--set max_steps=ten``, a misspelt key). Every config class of both stages reads through ``config_from_dict``
(registered names in ``stamp_st/configs/<kind>/`` through ``configs.load_config_json`` first)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from .errors import StampInputError


# ---------------------------------------------------------------------- numeric ranges (one home)
@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: every number must be finite, then ``lo``/``hi`` bound it
    (``None``: unbounded; ``lo_open``/``hi_open``: strict). ``why`` says what the value measures, for messages.
    A config field carries one as ``ranged(...)`` metadata; a command-line option uses the same object through
    ``cli.options.ranged_type``, so a value is checked in one place whether it comes from a file, ``--set`` or
    an option."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    why: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        return f"{kind} {' and '.join(parts)}" if parts else f"a finite {kind[2:] if self.integer else 'number'}"

    def problem(self, v) -> str | None:
        """Why ``v`` is out of range, or None (non-numbers are the type check's business)."""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if not math.isfinite(v):
            return f"{v!r} is not a finite number"
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)) or \
                self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return f"{v!r} is out of range: it must be {self.describe()}" + (f" ({self.why})" if self.why else "")
        return None


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def ranged(default=dataclasses.MISSING, rng: Range | None = None, **range_kw):
    """A dataclass field whose numeric values (or each element of a list/tuple) must lie in ``rng``."""
    return dataclasses.field(default=default, metadata={"range": rng or Range(**range_kw)})


def field_range(cls, name: str) -> Range | None:
    return next((f.metadata.get("range") for f in dataclasses.fields(cls) if f.name == name), None)


# shared ranges: the same quantity has the same limits in every command and config
SEED = Range(0, 2**32 - 1, integer=True, why="a random seed: 0 .. 2^32-1")
BATCH_SIZE = Range(1, 1 << 20, integer=True, why="items per batch")
WORKERS = Range(1, 1024, integer=True, why="worker processes")
LOADER_WORKERS = Range(0, 1024, integer=True, why="data loader processes; 0 loads in the main process")
CONTEXT = Range(1, 65_536, integer=True, why="tokens per spot; the released model uses 1500")
STEPS = Range(1, 10**9, integer=True, why="optimizer steps")
COUNT0 = Range(0, 10**9, integer=True)
PATCH_UM = Range(0, 10_000, lo_open=True, why="patch side in micrometres; the paper uses 112")
IMAGE_PX = Range(8, 8192, integer=True, why="image side in pixels")
UM_PER_PX = Range(0, 1000, lo_open=True, why="micrometres per slide pixel, about 0.25 at 40x and 0.5 at 20x")
MAGNIFICATION = Range(0, 200, lo_open=True, why="objective magnification, e.g. 20 or 40")
FRACTION = Range(0, 1)
LR = Range(0, 10, lo_open=True, why="learning rate, e.g. 1e-4")


def config_from_dict(cls, d, source=None, what: str = "setting", ignore: tuple[str, ...] = (),
                     hint_prefix: str = "allowed: "):
    """``cls(**d)`` after checking that ``d`` is an object, has no key ``cls`` does not know (``ignore``: keys
    that may appear and are dropped, e.g. ``description``) and that every value has its annotated type."""
    if not isinstance(d, dict):
        raise StampInputError(f"the {what}s must be a JSON object, got {type(d).__name__}", source,
                              hint='write them as {"name": value, ...}')
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known - set(ignore)
    if unknown:
        raise StampInputError(f"unknown {what}s {sorted(unknown)}", source, hint=f"{hint_prefix}{sorted(known)}")
    check_config_types(cls, d, source, what)
    return cls(**{k: v for k, v in d.items() if k in known})


def check_config_types(cls, d, source=None, what: str = "setting") -> dict:
    """Check the values of ``d`` against the annotations of dataclass ``cls`` (unknown keys are left to the
    caller); returns ``d`` unchanged. ``int`` passes where a ``float`` is expected, ``bool`` never passes for
    a number."""
    if not isinstance(d, dict):
        raise StampInputError(f"the {what}s must be a JSON object, got {type(d).__name__}", source,
                              hint='write them as {"name": value, ...}')
    hints = typing.get_type_hints(cls)
    ranges = {f.name: f.metadata.get("range") for f in dataclasses.fields(cls)}
    for k, v in d.items():
        name, where = (f"option --{k.replace('_', '-')}", None) if source == COMMAND_LINE else (f"{what} {k!r}", source)
        if k in hints and not _matches(v, hints[k]):
            raise StampInputError(f"{name} must be {_describe(hints[k])}, got {v!r}", where,
                                  hint=_fix_hint(k, source))
        problem = value_problem(v, ranges.get(k))
        if problem:
            raise StampInputError(f"{name}: {problem}", where, hint=_fix_hint(k, source))
    return d


def value_problem(v, rng: Range | None) -> str | None:
    """Why ``v`` (a number, or a list/tuple of numbers) is out of ``rng``; every number must be finite."""
    if isinstance(v, (list, tuple)):
        return next((p for p in (value_problem(x, rng) for x in v) if p), None)
    return (rng or Range()).problem(v)


def check_ranges(obj, source=None, what: str = "setting") -> None:
    """Check every ranged field of dataclass instance ``obj`` (for configs built in code, e.g. from options)."""
    for f in dataclasses.fields(obj):
        problem = value_problem(getattr(obj, f.name), f.metadata.get("range"))
        if problem:
            raise StampInputError(f"{what} {f.name!r}: {problem}", source, hint=_fix_hint(f.name, source))


COMMAND_LINE = "the command line"  # the source of values given as options: the hint names the option


def _fix_hint(k: str, source) -> str:
    if source == COMMAND_LINE:
        return f"fix --{k.replace('_', '-')}"
    if source is not None and str(source).startswith("--"):
        return f"fix {source} {k}=VALUE (JSON)" if str(source) == "--set" else f"fix {source}"
    if source is None:
        return f"fix the value of {k!r} (option --{k.replace('_', '-')})"
    return f"fix {k!r} in {source}"


def _matches(v, t) -> bool:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(v, a) for a in args)
    if t is type(None):
        return v is None
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is str:
        return isinstance(v, str)
    if t is dict or origin is dict:
        return isinstance(v, dict)
    if t in (list, tuple) or origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(_matches(x, a) for x, a in zip(v, args))
        return not args or all(_matches(x, args[0]) for x in v)
    return True  # an annotation this check does not know: accepted


def _describe(t) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if t is type(None):
        return "null"
    if origin is not None:
        return f"a {origin.__name__} of {', '.join(_describe(a) for a in args if a is not Ellipsis)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object",
            list: "a list"}.get(t, getattr(t, "__name__", str(t)))
