"""Whole-slide image access that never loads a whole slide into memory (ARCHITECTURE.md, "Slides").

Backends:
- ``tifffile``: TIFF, SVS, OME-TIFF and other tiled TIFFs. A read decodes only the tiles it touches: straight
  from the file for plain tiled levels (with a small LRU tile cache), else through the level's zarr array
  (``series.aszarr(level=k)``).
- ``openslide``: any format OpenSlide reads (MRXS, NDPI, VMS, SCN, ...); a fallback where tifffile fails, or
  on request (``backend="openslide"``).
- ``image``: JPEG/PNG. Small images are decoded in memory; big ones are decoded once into a memory-mapped
  ``.npy`` cache (atomically written, keyed by path, size and mtime), and regions are read from the memmap.
  For JPEG, the downsampled levels 2x/4x/8x are decoded in PIL's draft mode (DCT scaling: cheap and small)
  and cached the same way, so ``read_square`` on a coarse scale never touches level 0.

All reads return RGB uint8 (grey, palette, RGBA, 16-bit are converted; never BGR). Coordinates are level-0
pixels; whatever falls outside the image is white.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import StampInputError, require_file

TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".scn", ".bif", ".qptiff")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WHITE = 255
# A plausible microscope pixel size; outside this range a resolution tag is a scanner/editor default
# (72 or 300 dpi), not a measurement, and is ignored.
MPP_RANGE_UM = (0.02, 50.0)
CACHE_ENV = "STAMP_ST_CACHE"


def image_size_px(path: str | Path) -> tuple[int, int]:
    """(width, height) of level 0, read from headers only (no pixel decode), so readers can validate spot
    coordinates against images of any size cheaply."""
    path = require_file(path, "image file", hint="check the image path")
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                page = tf.series[0].levels[0] if tf.series else tf.pages[0]
                shape, axes = page.shape, page.axes
                size = int(shape[axes.index("X")]), int(shape[axes.index("Y")])
                _check_tiff_data(tf, path)
                return size
        except StampInputError:
            raise
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
            w, h, fmt = int(im.size[0]), int(im.size[1]), im.format
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"cannot read image header ({err})", path,
                              hint="check that the file is a complete JPEG/PNG/TIFF image") from err
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if fmt in PIL_STUB_FORMATS or w <= 0 or h <= 0:  # PIL names these formats but holds no pixels of them
        raise StampInputError(f"this is a {fmt or 'non-image'} file, not an image (whatever its name says)", path,
                              hint="give the H&E image itself (TIFF/SVS, JPEG or PNG)")
    _check_image_bytes(path, w, h, fmt)
    return w, h


# PIL formats identified from a header but never decoded (their plugins are stubs)
PIL_STUB_FORMATS = {"HDF5", "BUFR", "GRIB", "FITS", "WMF"}
# a compressed image holds at least this many bytes per 1000 pixels (deflate's best ratio is ~1:1032 on
# 1-bit data packed 8 px per byte); a file far smaller than its header's size is truncated or a decompression bomb
MIN_BYTES_PER_KPX = 1000 / (8 * 1100)
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _check_image_bytes(path: Path, w: int, h: int, fmt: str | None) -> None:
    """Header-only checks that catch a truncated JPEG/PNG (no end marker) and a header claiming far more pixels
    than the file could hold (a decompression bomb), without decoding the image."""
    size = path.stat().st_size
    if size < w * h / 1000 * MIN_BYTES_PER_KPX:
        raise StampInputError(f"the header claims {w} x {h} px but the file holds only {size} bytes: it is "
                              "truncated or a decompression bomb", path,
                              hint="give the complete image file (copy it again)")
    marker = _END_MARKERS.get(fmt or "")
    if marker:
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 4096))
            tail = fh.read()
        if marker not in tail:
            raise StampInputError(f"the {fmt} file is truncated or damaged: it ends before its end marker", path,
                                  hint="copy the image again (an interrupted download or copy)")


def _check_tiff_data(tf, path: Path) -> None:
    """Every strip/tile of every page lies inside the file: a truncated TIFF is reported here, not as a crop of
    white or a decoder error later (only offsets are read, no pixels)."""
    size = path.stat().st_size
    for page in tf.pages:
        offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        ends = [o + c for o, c in zip(offsets, counts) if c]
        if ends and max(ends) > size:
            raise StampInputError(f"the TIFF is truncated or damaged: its image data reach byte {max(ends)}, the file has "
                                  f"{size}", path, hint="copy the image again (an interrupted download or copy)")


def _plausible_mpp(v: float | None) -> float | None:
    if v is None or not math.isfinite(v) or not (MPP_RANGE_UM[0] <= v <= MPP_RANGE_UM[1]):
        return None
    return float(v)


def to_rgb_uint8(a: np.ndarray) -> np.ndarray:
    """[h, w] or [h, w, c] of any dtype -> [h, w, 3] uint8 RGB (alpha dropped, >8 bit scaled)."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.integer):
            shift = max(0, 8 * a.dtype.itemsize - 8)
            a = (a >> shift).astype(np.uint8) if a.dtype.kind == "u" else np.clip(a, 0, 255).astype(np.uint8)
        else:  # float images: [0, 1] by convention
            a = (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 2:  # grey + alpha
        return np.repeat(a[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def resize_rgb(a: np.ndarray, out_w: int, out_h: int, box: tuple[float, float, float, float] | None = None):
    """Antialiased (PIL bicubic with support scaled to the reduction) resize of an RGB array, optionally of
    a sub-pixel ``box`` (x0, y0, x1, y1) of it."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(a), "RGB")
    return np.asarray(im.resize((int(out_w), int(out_h)), Image.Resampling.BICUBIC, box=box))


class Slide:
    """Common interface; subclasses implement ``_read_level`` for in-bounds boxes of one pyramid level."""

    path: Path
    backend: str
    um_per_px: float | None
    level_dimensions: list[tuple[int, int]]  # (width, height) per level

    @property
    def width_px(self) -> int:
        return self.level_dimensions[0][0]

    @property
    def height_px(self) -> int:
        return self.level_dimensions[0][1]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        w0, h0 = self.level_dimensions[0]
        return [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]

    def _read_level(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def read_level_region(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """[h, w, 3] uint8 of pyramid ``level`` in that level's pixel coordinates; outside is white."""
        w, h = int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        ix0, iy0 = max(0, x0), max(0, y0)
        ix1, iy1 = min(lw, x0 + w), min(lh, y0 + h)
        if ix1 > ix0 and iy1 > iy0:
            try:
                pixels = self._read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
            except (StampInputError, MemoryError):
                raise
            except Exception as err:  # noqa: BLE001 - decoders raise many types for a damaged file
                raise StampInputError(f"cannot decode the image at level {level}, box x {ix0}-{ix1}, y {iy0}-{iy1} "
                                      f"({type(err).__name__}: {err})", self.path,
                                      hint="the image file is truncated or damaged: copy it again") from err
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = pixels
        return out

    def read_region(self, x0_px: int, y0_px: int, w_px: int, h_px: int) -> np.ndarray:
        """[h, w, 3] uint8 RGB at level 0."""
        return self.read_level_region(0, int(x0_px), int(y0_px), int(w_px), int(h_px))

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose resolution is still at least what ``downsample`` needs (1 % slack for
        scanners whose level ratios are 4.0003 rather than 4)."""
        best = 0
        for k, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01 and d >= self.level_downsamples[best]:
                best = k
        return best

    def read_square(self, center_xy_px, side_px: float, out_px: int) -> np.ndarray:
        """The square of ``side_px`` level-0 pixels centred on ``center_xy_px``, resized to ``out_px``;
        read from the coarsest level that still has enough resolution, with sub-pixel placement."""
        cx, cy = float(center_xy_px[0]), float(center_xy_px[1])
        side_px, out_px = float(side_px), int(out_px)
        if not side_px > 0 or out_px <= 0:
            raise ValueError(f"side_px and out_px must be positive, got {side_px}, {out_px}")
        level = self.best_level(side_px / out_px)
        lw, lh = self.level_dimensions[level]
        sx, sy = self.width_px / lw, self.height_px / lh
        fx0, fy0 = (cx - side_px / 2) / sx, (cy - side_px / 2) / sy
        fx1, fy1 = (cx + side_px / 2) / sx, (cy + side_px / 2) / sy
        ix0, iy0 = math.floor(fx0), math.floor(fy0)
        ix1, iy1 = math.ceil(fx1), math.ceil(fy1)
        a = self.read_level_region(level, ix0, iy0, max(1, ix1 - ix0), max(1, iy1 - iy0))
        box = (fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0)
        if box == (0.0, 0.0, float(a.shape[1]), float(a.shape[0])) and a.shape[:2] == (out_px, out_px):
            return a
        return resize_rgb(a, out_px, out_px, box=box)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.width_px}x{self.height_px} px, "
                f"um_per_px={self.um_per_px}, levels={self.level_count})")


# --------------------------------------------------------------------------------------------- tifffile
class TiffSlide(Slide):
    backend = "tifffile"

    def __init__(self, path: str | Path, series: int = 0, tile_cache_mb: float = 64.0):
        import tifffile
        import zarr

        self.path = Path(path)
        self._tf = tifffile.TiffFile(self.path)
        self._tile_cache: OrderedDict = OrderedDict()
        self._tile_cache_bytes, self._tile_cache_max = 0, int(tile_cache_mb * 2**20)
        try:
            if not self._tf.series:
                raise StampInputError("TIFF holds no image series", self.path)
            s = self._tf.series[series]
            self._levels = []
            self.level_dimensions = []
            self._index: list[tuple] = []
            self._tiled: list = []  # per level: the page when tiles can be decoded directly, else None
            for k, lvl in enumerate(s.levels):
                axes = lvl.axes
                if "X" not in axes or "Y" not in axes:
                    raise StampInputError(f"TIFF series has axes {axes!r}, no X/Y", self.path)
                arr = zarr.open(s.aszarr(level=k), mode="r")
                self._levels.append(arr)
                self.level_dimensions.append((int(lvl.shape[axes.index("X")]), int(lvl.shape[axes.index("Y")])))
                self._index.append(tuple(axes))
                self._tiled.append(_direct_tile_page(lvl))
            self.um_per_px = _plausible_mpp(_tiff_mpp(self._tf))
        except Exception:
            self._tf.close()
            raise

    def _read_level(self, level, x0, y0, w, h):
        if self._tiled[level] is not None:
            return self._read_tiles(level, x0, y0, w, h)
        axes = self._index[level]
        sel = []
        for ax in axes:
            if ax == "Y":
                sel.append(slice(y0, y0 + h))
            elif ax == "X":
                sel.append(slice(x0, x0 + w))
            elif ax in "SC" and ax in axes:
                sel.append(slice(None))
            else:  # time, depth, ...: the first plane
                sel.append(0)
        a = np.asarray(self._levels[level][tuple(sel)])
        kept = [ax for ax in axes if ax in "YXSC"]
        a = np.moveaxis(a, [kept.index("Y"), kept.index("X")], [0, 1])
        if a.ndim == 4:  # both S and C: keep the first of the extra axis
            a = a[..., 0]
        return to_rgb_uint8(a)

    def _read_tiles(self, level, x0, y0, w, h):
        """Decode the tiles a box touches, straight from the file (half the per-call cost of zarr), through
        a small LRU cache: neighbouring spots share tiles."""
        page = self._tiled[level]
        tw, tl = page.tilewidth, page.tilelength
        ntx = -(-page.imagewidth // tw)
        out = None
        for ty in range(y0 // tl, (y0 + h - 1) // tl + 1):
            for tx in range(x0 // tw, (x0 + w - 1) // tw + 1):
                tile = self._tile(level, page, ty * ntx + tx, tl, tw)
                if out is None:
                    out = np.empty((h, w) + tile.shape[2:], tile.dtype)
                ya, xa = max(y0, ty * tl), max(x0, tx * tw)
                yb, xb = min(y0 + h, (ty + 1) * tl), min(x0 + w, (tx + 1) * tw)
                out[ya - y0:yb - y0, xa - x0:xb - x0] = tile[ya - ty * tl:yb - ty * tl, xa - tx * tw:xb - tx * tw]
        return to_rgb_uint8(out)

    def _tile(self, level, page, j, tl, tw):
        key = (level, j)
        tile = self._tile_cache.get(key)
        if tile is not None:
            self._tile_cache.move_to_end(key)
            return tile
        offset, count = page.dataoffsets[j], page.databytecounts[j]
        fh = self._tf.filehandle
        data = None
        if count:
            with fh.lock:
                fh.seek(offset)
                raw = fh.read(count)
            data = page.decode(raw, j, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
        if data is None:  # tile never written: not scanned, white
            samples = page.samplesperpixel
            data = np.full((tl, tw, samples) if samples > 1 else (tl, tw), np.iinfo(page.dtype).max
                           if np.issubdtype(page.dtype, np.integer) else 1, page.dtype)
        else:
            data = data.reshape(data.shape[1:]) if data.shape[-1] > 1 else data.reshape(data.shape[1:3])
        self._tile_cache[key] = data
        self._tile_cache_bytes += data.nbytes
        while self._tile_cache_bytes > self._tile_cache_max and len(self._tile_cache) > 1:
            _, old = self._tile_cache.popitem(last=False)
            self._tile_cache_bytes -= old.nbytes
        return data

    def close(self):
        self._tile_cache.clear()
        self._tf.close()


def _direct_tile_page(level_series):
    """The level's page when its tiles can be decoded one by one (one 2D tiled plane, interleaved
    samples); None sends reads through zarr instead."""
    import tifffile

    if len(level_series.pages) != 1:
        return None
    page = level_series.pages[0]
    if not isinstance(page, tifffile.TiffPage) or not page.is_tiled or page.imagedepth != 1:
        return None
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        return None
    if level_series.axes not in ("YXS", "YX"):
        return None
    return page


def _tiff_mpp(tf) -> float | None:
    """µm/px from, in order: Aperio ``MPP`` in the SVS description, OME PhysicalSizeX, resolution tags."""
    page = tf.pages[0]
    desc = page.description or ""
    if tf.is_svs or desc.startswith("Aperio"):
        m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", desc)
        if m:
            return float(m.group(1))
    if tf.is_ome and tf.ome_metadata:
        mpp = _ome_mpp(tf.ome_metadata)
        if mpp is not None:
            return mpp
    return _resolution_tag_mpp(page)


def _ome_mpp(xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            v = el.get("PhysicalSizeX")
            if v is None:
                return None
            unit = el.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
            return None if scale is None else float(v) * scale
    return None


def _resolution_tag_mpp(page) -> float | None:
    tags = page.tags
    xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    px_per_unit = num / den
    unit = int(unit.value)
    if unit == 2:  # inch
        return 25_400.0 / px_per_unit
    if unit == 3:  # centimetre
        return 10_000.0 / px_per_unit
    return None  # no absolute unit


# --------------------------------------------------------------------------------------------- openslide
class OpenSlideSlide(Slide):
    backend = "openslide"

    def __init__(self, path: str | Path):
        import openslide

        self.path = Path(path)
        self._os = openslide.OpenSlide(str(self.path))
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._os.level_dimensions]
        self._ds = [float(d) for d in self._os.level_downsamples]
        props = self._os.properties
        mpp = props.get("openslide.mpp-x")
        self.um_per_px = _plausible_mpp(float(mpp)) if mpp else None

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._ds)

    def _read_level(self, level, x0, y0, w, h):
        # OpenSlide takes level-0 coordinates for the origin and returns premultiplied RGBA
        ds = self._ds[level]
        im = self._os.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level, (w, h))
        a = np.asarray(im)
        rgb, alpha = a[..., :3].astype(np.uint16), a[..., 3:4].astype(np.uint16)
        return (rgb + (255 - alpha)).clip(0, 255).astype(np.uint8)  # transparent (no tissue scanned) -> white

    def close(self):
        self._os.close()


# --------------------------------------------------------------------------------------------- JPEG/PNG
def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stamp_st"
    return base / "slides"


def check_cache_dir(cache: Path) -> None:
    """The decoded-image cache must be a folder we can write: a file or a read-only folder there is the
    cache setting's problem (``STAMP_ST_CACHE`` / XDG_CACHE_HOME), not the image's."""
    import os as _os

    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file, not a folder" if probe == cache else f"cannot be a folder: {probe} is a file"
        raise StampInputError(f"the decoded-image cache {what}", cache,
                              hint=f"set {CACHE_ENV} to a folder (or remove the file {probe})")
    if not _os.access(probe, _os.W_OK | _os.X_OK):
        raise StampInputError(f"no permission to write the decoded-image cache in {probe}", cache,
                              hint=f"set {CACHE_ENV} to a folder you can write")


CACHE_LIMIT_ENV = "STAMP_ST_CACHE_GB"
DEFAULT_CACHE_LIMIT_GB = 20.0
_CACHE_FILE = re.compile(r"^[0-9a-f]{20}_x\d+\.npy$")  # the only names the cache writes (and may evict)


def cache_limit_bytes() -> int:
    """Size limit of the decoded-image cache: ``STAMP_ST_CACHE_GB`` (GB, default 20)."""
    raw = os.environ.get(CACHE_LIMIT_ENV, "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_CACHE_LIMIT_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0 or gb == float("inf"):
        raise StampInputError(f"{CACHE_LIMIT_ENV}={raw!r} is not a size in GB", hint=f"e.g. {CACHE_LIMIT_ENV}=20")
    return int(gb * 1e9)


def cache_files(directory: Path) -> list[Path]:
    """The cache's own files in ``directory`` (nothing else there is ever touched)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if _CACHE_FILE.match(p.name) and p.is_file() and not p.is_symlink()]


def make_cache_room(directory: Path, need_bytes: int, limit_bytes: int | None = None) -> bool:
    """Evict least recently used cache files until ``need_bytes`` more fit under the limit; False when the new
    file alone is over the limit (it is then not cached)."""
    limit = cache_limit_bytes() if limit_bytes is None else int(limit_bytes)
    if need_bytes > limit:
        return False
    files = []
    for p in cache_files(directory):
        try:
            st = p.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        files.append((st.st_mtime, st.st_size, p))
    total = sum(f[1] for f in files)
    for _, size, p in sorted(files):
        if total + need_bytes <= limit:
            break
        p.unlink(missing_ok=True)  # a process that has it memmapped keeps reading it: Linux frees it after
        total -= size
    return True


class ImageSlide(Slide):
    """Plain JPEG/PNG. Images over ``max_in_memory_px`` pixels are decoded once to a memmapped cache."""

    backend = "image"

    def __init__(self, path: str | Path, cache: str | Path | None = None, max_in_memory_px: int = 4096 * 4096):
        from PIL import Image

        self.path = Path(path)
        self._cache = Path(cache) if cache is not None else cache_dir()
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                self._format = im.format
                w, h = im.size
                dpi = im.info.get("dpi")
        except Exception as err:  # noqa: BLE001
            raise StampInputError(f"cannot open image ({err})", self.path,
                                  hint="check that the file is a complete JPEG/PNG") from err
        finally:
            Image.MAX_IMAGE_PIXELS = old
        if self._format in PIL_STUB_FORMATS or w <= 0 or h <= 0:
            raise StampInputError(f"this is a {self._format or 'non-image'} file, not an image", self.path,
                                  hint="give the H&E image itself (TIFF/SVS, JPEG or PNG)")
        _check_image_bytes(self.path, w, h, self._format)
        self.um_per_px = _plausible_mpp(25_400.0 / float(dpi[0])) if dpi and dpi[0] else None
        self._in_memory = w * h <= max_in_memory_px
        self.level_dimensions = [(w, h)]
        self._scales = [1]
        if self._format == "JPEG" and not self._in_memory:
            for k in (2, 4, 8):  # DCT-scaled decodes that libjpeg gives for free
                size = self._draft_size(k)
                if size is not None:
                    self.level_dimensions.append(size)
                    self._scales.append(k)
        self._arrays: dict[int, np.ndarray] = {}

    def _draft_size(self, scale: int) -> tuple[int, int] | None:
        """The size PIL's draft mode gives for a 1/scale decode (header only), or None if it would not
        reduce by exactly that factor."""
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                w, h = im.size
                im.draft("RGB", (w // scale, h // scale))
                size = im.size
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return size if size == (-(-w // scale), -(-h // scale)) else None

    def _key(self) -> str:
        st = self.path.stat()
        raw = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha1(raw.encode()).hexdigest()[:20]

    def _decode(self, scale: int) -> np.ndarray:
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                if scale > 1:
                    im.draft("RGB", (im.size[0] // scale, im.size[1] // scale))
                if im.mode != "RGB":
                    im = im.convert("RGB")
                im.load()
                return im
        except Exception as err:  # noqa: BLE001
            raise StampInputError(f"cannot decode image ({err})", self.path,
                                  hint="the file may be truncated; re-export or re-download it") from err
        finally:
            Image.MAX_IMAGE_PIXELS = old

    def _level_array(self, level: int) -> np.ndarray:
        if level in self._arrays:
            return self._arrays[level]
        scale = self._scales[level]
        lw, lh = self.level_dimensions[level]
        target = self._cache / f"{self._key()}_x{scale}.npy"
        if not self._in_memory:
            check_cache_dir(self._cache)
        if not self._in_memory and not target.exists():
            need = 3 * lw * lh + 128
            if make_cache_room(self._cache, need):
                self._write_cache(target, scale)
            else:
                warnings.warn(f"{self.path}: its decoded image ({need / 1e9:.1f} GB) is over the cache limit "
                              f"({cache_limit_bytes() / 1e9:.1f} GB, {CACHE_LIMIT_ENV}): decoded in memory instead",
                              stacklevel=2)
        arr = None
        if not self._in_memory and target.exists():
            try:
                os.utime(target)  # recently used: evicted last
                arr = np.load(target, mmap_mode="r")
            except FileNotFoundError:  # evicted by another process just now
                arr = None
        if arr is None:
            arr = np.asarray(self._decode(scale))
        elif arr.shape != (lh, lw, 3):
            target.unlink(missing_ok=True)
            raise StampInputError(f"stale slide cache {target}", self.path, hint="run again")
        self._arrays[level] = arr
        return arr

    def _write_cache(self, target: Path, scale: int) -> None:
        """Decode once (the only moment the decoded image is in memory: 3 bytes/px) and write a .npy file in
        row strips with plain writes (a writable memmap would add the whole file to resident memory);
        written atomically so a crash never leaves a truncated cache that later runs would trust."""
        from ..io_utils import atomic_path

        im = self._decode(scale)
        w, h = im.size
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                     "shape": (h, w, 3)})
            strip = max(1, (32 << 20) // (3 * w))
            for y in range(0, h, strip):
                fh.write(im.crop((0, y, w, min(h, y + strip))).tobytes())
            fh.flush()
        im.close()

    def _read_level(self, level, x0, y0, w, h):
        return np.array(self._level_array(level)[y0:y0 + h, x0:x0 + w])

    def close(self):
        self._arrays.clear()


def open_slide(path: str | Path, backend: str = "auto", **kwargs) -> Slide:
    """Open a slide. ``backend``: ``auto`` (tifffile for TIFF-like files, OpenSlide where tifffile fails or
    for other formats, PIL+memmap for JPEG/PNG), or one of ``tifffile``, ``openslide``, ``image``."""
    path = require_file(path, "slide file", hint="check the image path")
    suffix = path.suffix.lower()
    if backend == "tifffile":
        return _open_tiff(path, **kwargs)
    if backend == "openslide":
        return _open_openslide(path)
    if backend == "image":
        return ImageSlide(path, **kwargs)
    if backend != "auto":
        raise ValueError(f"unknown slide backend {backend!r}")
    if suffix in IMAGE_SUFFIXES:
        return ImageSlide(path, **kwargs)
    if suffix in TIFF_SUFFIXES:
        try:
            return _open_tiff(path, **kwargs)
        except StampInputError as tiff_err:
            try:
                return _open_openslide(path)
            except StampInputError:
                raise tiff_err from None
    return _open_openslide(path)


def _open_tiff(path: Path, **kwargs) -> TiffSlide:
    try:
        return TiffSlide(path, **kwargs)
    except StampInputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"tifffile cannot read this slide ({err})", path,
                              hint="check the file, or try backend='openslide'") from err


def _open_openslide(path: Path) -> OpenSlideSlide:
    try:
        import openslide  # noqa: F401
    except ImportError as err:
        raise StampInputError("this slide format needs OpenSlide, which is not installed", path,
                              hint="pip install openslide-python openslide-bin, or convert to TIFF") from err
    try:
        return OpenSlideSlide(path)
    except Exception as err:  # noqa: BLE001
        raise StampInputError(f"OpenSlide cannot read this slide ({err})", path,
                              hint="check the file format (SVS, TIFF, NDPI, MRXS, JPEG, PNG, ...)") from err
