"""The one checkpoint format of the project: a folder with ``model.safetensors`` (tensors only, no pickle) and
``config.json`` (everything needed to rebuild and use the model: ``kind``, architecture, vocabulary, tokenizer
config, free extras such as crop geometry). A checkpoint appears whole or not at all.

``config.json`` keys: ``format`` (= "stamp-st-checkpoint"), ``format_version``, ``kind`` (e.g. ``gene_encoder``,
``stamp``), ``architecture`` (dict), ``vocabulary`` (``GeneVocabulary.to_json()``) with ``vocab_checksum`` copied
to the top level for quick checks, ``tokenizer`` (dict), ``input_um_per_px`` (µm per pixel of the model's input
patch, not the slide's) and any extra fields the caller adds. Checkpoints written before named that pixel size
``um_per_px``: they load with the current name (``RENAMED_KEYS``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import DataNotFoundError, StampInputError
from ..io_utils import atomic_write_json, current_umask, make_temp_dir

FORMAT = "stamp-st-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
INPUT_UM_PER_PX = "input_um_per_px"
RENAMED_KEYS = {"um_per_px": INPUT_UM_PER_PX}  # earlier config.json key -> its name now


def current_keys(cfg: dict) -> dict:
    """``cfg`` with keys of earlier checkpoints under their current names (a current key wins)."""
    out = dict(cfg)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def checkpoint_config(kind: str, architecture: dict, vocabulary: dict | None = None, tokenizer: dict | None = None,
                      **extra) -> dict:
    """Build a ``config.json`` dict with the standard keys (extras are kept as given)."""
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "architecture": dict(architecture)}
    if vocabulary is not None:
        cfg["vocabulary"] = vocabulary
        cfg["vocab_checksum"] = vocabulary.get("checksum")
    if tokenizer is not None:
        cfg["tokenizer"] = dict(tokenizer)
    cfg.update(extra)
    return current_keys(cfg)


def write_checkpoint_files(directory: str | Path, model_state: dict, config: dict) -> None:
    """Write the two files into an existing folder (not atomic as a whole: see ``save_checkpoint``)."""
    from safetensors.torch import save_file

    if "kind" not in config:
        raise ValueError("checkpoint config needs a 'kind'")
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    directory = Path(directory)
    tensors, seen = {}, {}
    for k, v in model_state.items():
        t = v.detach().to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr in seen:  # safetensors refuses shared storage (tied weights): store a copy
            t = t.clone()
        seen[ptr] = k
        tensors[k] = t
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, "kind": str(config["kind"])})
    os.chmod(directory / WEIGHTS_FILE, 0o666 & ~current_umask())  # safetensors writes 0600
    atomic_write_json(directory / CONFIG_FILE, config)


def save_checkpoint(directory: str | Path, model_state: dict, config: dict, overwrite: bool = False) -> Path:
    """Write a checkpoint folder atomically: built in a temporary sibling, then renamed into place.

    Never deletes what stamp-st did not write: an existing ``directory`` must be empty, or a stamp-st checkpoint
    holding only checkpoint files and ``overwrite=True`` (it is then replaced once the new one is complete)."""
    directory = Path(directory)
    check_checkpoint_target(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, f".{directory.name}.")
    try:
        write_checkpoint_files(tmp, model_state, config)
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# files a stamp-st checkpoint folder may hold (the engine adds its trainer state)
CHECKPOINT_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE, "trainer_state.pt"})


def check_checkpoint_target(directory: Path, overwrite: bool = False) -> None:
    """Refuse an output folder whose replacement would lose data stamp-st did not write."""
    directory = Path(directory)
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir() or directory.is_symlink():
        raise StampInputError("the output exists and is not a folder", directory,
                              hint="give a new folder name for the checkpoint")
    names = sorted(p.name for p in directory.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in CHECKPOINT_FILES]
    is_ckpt = CONFIG_FILE in names and _reads_as_checkpoint(directory / CONFIG_FILE)
    if foreign or not is_ckpt:
        shown = ", ".join((foreign or names)[:5]) + (" ..." if len(foreign or names) > 5 else "")
        raise StampInputError(f"the output folder is not empty and is not a stamp-st checkpoint (holds {shown}); "
                              "stamp-st never deletes files it did not write", directory,
                              hint="give a new or empty folder as the output")
    if not overwrite:
        raise StampInputError("the output folder already holds a stamp-st checkpoint", directory,
                              hint="pass --overwrite to replace it, or give another folder")


def _reads_as_checkpoint(cfg_path: Path) -> bool:
    try:
        return json.loads(cfg_path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` onto ``dst``; an existing ``dst`` is moved aside first and removed after."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint folder (or of the folder holding a given ``model.safetensors``)."""
    directory = _checkpoint_dir(path)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise DataNotFoundError("checkpoint has no config.json", directory,
                                hint="point to a folder written by stamp-st (model.safetensors + config.json)")
    from ..io_utils import read_json

    cfg = read_json(cfg_path, "checkpoint's config.json", hint="use an intact checkpoint folder")
    if not isinstance(cfg, dict):
        raise StampInputError(f"config.json must be a JSON object, got {type(cfg).__name__}", cfg_path,
                              hint="use an intact checkpoint folder written by stamp-st")
    if cfg.get("format") != FORMAT:
        raise StampInputError(f"not a stamp-st checkpoint (format {cfg.get('format')!r})", cfg_path,
                              hint="released STAMP weights must first be converted: stamp-st convert-released")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise StampInputError(f"checkpoint format version {cfg['format_version']} is newer than this stamp-st "
                              f"understands ({FORMAT_VERSION})", cfg_path, hint="upgrade stamp-st")
    return current_keys(cfg)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    expect_kind: str | None = None) -> tuple[dict, dict]:
    """(state_dict, config) of a checkpoint folder."""
    from safetensors.torch import load_file

    directory = _checkpoint_dir(path)
    cfg = load_config(directory)
    if expect_kind is not None and cfg.get("kind") != expect_kind:
        raise StampInputError(f"checkpoint holds a {cfg.get('kind')!r} model, expected {expect_kind!r}", directory)
    if expect_kind is not None and not isinstance(cfg.get("architecture"), dict):
        raise StampInputError("config.json has no 'architecture' object, so the model cannot be built",
                              directory / CONFIG_FILE,
                              hint="the checkpoint's config.json is damaged or hand-edited: use the config.json "
                                   "written with these weights")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DataNotFoundError("checkpoint has no model.safetensors", directory)
    try:
        sd = load_file(str(weights), device=str(device))
    except Exception as err:  # noqa: BLE001 - a corrupt file is the user's input
        raise StampInputError(f"cannot read weights ({err})", weights,
                              hint="the file is corrupt or truncated: use another checkpoint") from err
    return sd, cfg


def load_state_checked(model: torch.nn.Module, sd: dict, path, strict: bool = False):
    """``model.load_state_dict`` with a tensor of another shape reported as the checkpoint's fault (torch raises
    a RuntimeError listing every tensor), naming the folder."""
    own = model.state_dict()
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if bad:
        k = bad[0]
        raise StampInputError(f"checkpoint tensors do not fit the model: {len(bad)} with other shapes (e.g. {k} "
                              f"{tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)})", path,
                              hint="the weights and config.json do not belong together: use an intact checkpoint")
    return model.load_state_dict(sd, strict=strict)


def _checkpoint_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CONFIG_FILE):
        return p.parent
    if p.is_file():
        swapped = " (a sample or embedding file: are MODEL and SAMPLE swapped?)" if p.suffix in (".h5ad", ".h5") else ""
        raise StampInputError(f"this is a file, not a checkpoint folder{swapped}", p,
                              hint="give the checkpoint folder (model.safetensors + config.json), or backbone:NAME")
    if not p.is_dir():
        raise DataNotFoundError("checkpoint folder not found", p, hint="check the path")
    return p
