"""The one loader of settings (JSON configs, ``--set KEY=JSON``, registered named configs) into config
dataclasses: unknown keys and wrong types are the user's mistake and are reported with the setting's name and
where it came from, not surfacing later as a traceback deep inside training (``"lr": "3e-4"``,
``--set max_steps=ten``, a misspelt key). Every config class of both stages reads through ``config_from_dict``
(registered names in ``stamp_st/configs/<kind>/`` through ``configs.load_config_json`` first)."""

from __future__ import annotations

import dataclasses
import types
import typing

from .errors import StampInputError


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
    for k, v in d.items():
        if k in hints and not _matches(v, hints[k]):
            raise StampInputError(f"{what} {k!r} must be {_describe(hints[k])}, got {v!r}", source,
                                  hint=f"fix {k!r} in the config file or in --set {k}=VALUE (JSON)")
    return d


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
