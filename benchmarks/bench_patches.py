"""Spot patch and region extraction from a big pyramidal slide: throughput and peak memory.

Writes once (cached) a 40,000 x 40,000 px pyramidal, JPEG-compressed, tiled TIFF at 0.5 µm/px with tifffile,
tile by tile from a generator (a child process does the writing, so its memory does not count in the
reader's peak). Then opens it with ``stamp_st.readers.slide.open_slide`` and times:
  1. N random spot patches: ``read_square`` of 112 µm (224 px) -> 224 px;
  2. N full spot crops: ``extract_spot_crops`` (patch + 336 µm region with its 3x3 label + 16 px thumbnail).
Prints patches/s, crops/s and the reader process's peak RSS (``ru_maxrss``) and Python heap peak
(tracemalloc).

    python benchmarks/bench_patches.py [--size 40000] [--n 500] [--cache DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

TILE = 512
UM_PER_PX = 0.5


def _textures(n: int = 16, seed: int = 0) -> list[np.ndarray]:
    """A few tissue-like RGB tiles (pink/purple blobs with grain) reused across the slide: cheap to make,
    realistic enough for JPEG sizes and decode cost."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.random((TILE // 16, TILE // 16))
        blob = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((TILE, TILE), Image.BICUBIC),
                          np.float32) / 255
        grain = np.asarray(Image.fromarray(rng.integers(0, 256, (TILE, TILE), dtype=np.uint8))
                           .filter(ImageFilter.GaussianBlur(1.5)), np.float32) / 255
        h = 0.6 * blob + 0.4 * grain
        rgb = np.stack([235 - 60 * h, 200 - 140 * h, 225 - 70 * h], -1)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


def _tiles(height: int, width: int, textures: list[np.ndarray], level: int):
    """Tiles in TIFF order (row-major), generated on the fly: memory stays one tile."""
    for ty in range(0, height, TILE):
        for tx in range(0, width, TILE):
            yield textures[(ty // TILE * 7919 + tx // TILE * 104729 + level) % len(textures)]


def write_slide(path: Path, size: int) -> None:
    import tifffile

    from stamp_st.io_utils import atomic_path

    textures = _textures()
    dims = [size]
    while dims[-1] // 2 >= 1024:
        dims.append(dims[-1] // 2)
    kw = dict(dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
              compressionargs={"level": 85})
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            tw.write(_tiles(size, size, textures, 0), shape=(size, size, 3), subifds=len(dims) - 1,
                     resolution=(1e4 / UM_PER_PX, 1e4 / UM_PER_PX), resolutionunit="CENTIMETER", **kw)
            for k, d in enumerate(dims[1:], start=1):
                tw.write(_tiles(d, d, textures, k), shape=(d, d, 3), subfiletype=1, **kw)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40_000, help="slide side in px (level 0)")
    ap.add_argument("--n", type=int, default=500, help="spots per measurement")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "stamp_st_bench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.write_only:
        write_slide(args.write_only, args.size)
        return 0

    path = args.cache / f"synthetic_{args.size}px_jpeg_pyramid.tif"
    if not path.exists():
        print(f"writing {path} (once; cached) ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--size", str(args.size), "--write-only", str(path)], check=True)
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"  wrote {path.stat().st_size / 2**20:,.0f} MiB in {time.perf_counter() - t0:.1f} s; "
              f"writer peak RSS {child:,.0f} MiB")

    from stamp_st.preprocessing.crops import CropGeometry, extract_spot_crops
    from stamp_st.readers.slide import open_slide

    print(f"reader RSS after imports: {rss_mb():,.0f} MiB (peak so far)")
    tracemalloc.start()
    rng = np.random.default_rng(args.seed)
    geom = CropGeometry()
    with open_slide(path) as slide:
        print(f"slide: {slide!r}; levels {slide.level_dimensions}")
        side_px = geom.patch_side_px(slide.um_per_px)
        centers = rng.uniform(0, [slide.width_px, slide.height_px], size=(args.n, 2))
        slide.read_square(centers[0], side_px, geom.out_px)  # warm-up: opens the level's store
        t0 = time.perf_counter()
        for c in centers:
            slide.read_square(c, side_px, geom.out_px)
        dt = time.perf_counter() - t0
        print(f"patches: {args.n / dt:8.1f} /s  ({args.n} x {side_px:.0f} px -> {geom.out_px} px, {dt:.2f} s)")
        centers = rng.uniform(0, [slide.width_px, slide.height_px], size=(args.n, 2))
        t0 = time.perf_counter()
        batch = 64
        n_valid = 0
        for i in range(0, args.n, batch):
            crops = extract_spot_crops(slide, centers[i:i + batch], slide.um_per_px, geom, rng)
            n_valid += int(crops.region_valid.sum())
        dt = time.perf_counter() - t0
        print(f"crops:   {args.n / dt:8.1f} /s  (patch + {geom.region_factor}x region + thumb, {n_valid} regions "
              f"valid, batches of {batch}, {dt:.2f} s)")
    _, heap_peak = tracemalloc.get_traced_memory()
    print(f"reader peak RSS {rss_mb():,.0f} MiB; Python heap peak while reading {heap_peak / 2**20:,.0f} MiB; "
          f"slide file {path.stat().st_size / 2**20:,.0f} MiB on disk, "
          f"{args.size * args.size * 3 / 2**30:,.1f} GiB decoded")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
