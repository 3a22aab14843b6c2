"""Whole-slide image access that never loads a whole slide into memory (ARCHITECTURE.md, "Slides")."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataNotFoundError, StampInputError

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn", ".bif")


def image_size_px(path: str | Path) -> tuple[int, int]:
    """(width, height) of level 0, read from headers only (no pixel decode), so readers can validate spot
    coordinates against images of any size cheaply."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError("image file not found", path, hint="check the image path")
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.series[0].levels[0] if tf.series else tf.pages[0]
                shape, axes = page.shape, page.axes
                return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad input file
            try:
                return _pil_size(path)
            except StampInputError:
                raise StampInputError(f"cannot read TIFF header ({err})", path,
                                      hint="check that the file is a complete, valid TIFF/SVS") from err
    return _pil_size(path)


def _pil_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide JPEGs exceed PIL's decompression-bomb limit; we do not decode
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"cannot read image header ({err})", path,
                              hint="check that the file is a complete JPEG/PNG/TIFF image") from err
    finally:
        Image.MAX_IMAGE_PIXELS = old
