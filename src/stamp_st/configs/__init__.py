"""Registered configuration files (JSON), shipped with the package: ``gene_encoder/<name>.json`` and
``pretrain/<name>.json`` and ``align/<name>.json``. One loader resolves a registered name or a user's JSON path."""

from __future__ import annotations

from pathlib import Path

from ..errors import StampInputError

CONFIG_DIR = Path(__file__).resolve().parent


def registered(kind: str) -> tuple[str, ...]:
    """Names of the configs shipped for ``kind`` (a subfolder of this package)."""
    return tuple(sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.json")))


def load_config_json(kind: str, name_or_path: str | Path) -> tuple[dict, str]:
    """(parsed JSON, where it came from) for a registered name of ``kind`` or a JSON file path."""
    names = registered(kind)
    path = CONFIG_DIR / kind / f"{name_or_path}.json" if str(name_or_path) in names else Path(name_or_path)
    if path.exists() and not path.is_file():
        from ..errors import not_a_file

        raise StampInputError(f"the {kind.replace('_', ' ')} config is {not_a_file(path)}", path,
                              hint=f"use one of {', '.join(names)} or a JSON file path")
    if not path.is_file():
        raise StampInputError(f"no {kind.replace('_', ' ')} config named {str(name_or_path)!r}", path,
                              hint=f"use one of {', '.join(names)} or a JSON file path")
    from ..io_utils import read_json

    d = read_json(path, f"{kind.replace('_', ' ')} config")
    if not isinstance(d, dict):
        raise StampInputError(f"the config must be a JSON object, got {type(d).__name__}", path,
                              hint='write it as {"name": value, ...}')
    return d, str(path)
