"""A small HEST-1k root built from real data, for ``stamp-st reproduce --smoke`` (CI, a fresh clone, no
network): her2st sections written as HEST writes its samples (HEST ``HESTData.save`` / ``tiff_save`` and its
Hugging Face layout, read back by ``readers.hest``):

- ``st/<id>.h5ad``: raw counts (spots x genes, gene symbols), ``obs`` ``in_tissue``, ``array_row``,
  ``array_col``, ``pxl_col_in_fullres``, ``pxl_row_in_fullres``, ``obsm['spatial']`` = spot centres in
  full-resolution slide pixels;
- ``wsis/<id>.tif``: a pyramidal, 256 x 256-tiled TIFF (LZW, as HEST writes it), each level half the one
  before, with the pixel size in its resolution tags (pixels per centimetre, as pyvips writes them);
- ``metadata/<id>.json``: the sample's row of HEST's metadata table (``st_technology``, ``inter_spot_dist``,
  ``spot_diameter``, ``pixel_size_um_estimated``, ...);
- ``HEST_v1_1_0.csv``: the metadata table, one row per sample (what ``download hest --filter`` reads).

The slide is the section's own full-resolution H&E at its own pixel size, cropped to the spots plus a margin of
``MARGIN_UM`` (wider than any crop the corpus takes: 3 x 112 µm regions) so that the smoke run writes and reads
less; spot coordinates are shifted with it. Nothing is resampled.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import StampInputError
from ..io_utils import atomic_path, atomic_write_text

SMOKE_SECTIONS = ("B4", "C2", "C3")  # three of the four imaged her2st sections
TILE_PX = 256
MARGIN_UM = 400.0
MIN_LEVEL_PX = 512  # HEST/pyvips stop when a level fits one tile; a few levels suffice here
METADATA_CSV = "HEST_v1_1_0.csv"  # download.HEST_METADATA_CSV
HEST_COLUMNS = ("dataset_title", "id", "image_filename", "organ", "disease_state", "oncotree_code", "species",
                "patient", "st_technology", "inter_spot_dist", "spot_diameter", "spots_under_tissue",
                "preservation_method", "nb_genes", "pixel_size_um_embedded", "pixel_size_um_estimated",
                "fullres_px_width", "fullres_px_height", "tissue", "subseries")


def smoke_sample_id(section: str) -> str:
    return f"her2st_{section}"


def write_pyramidal_tiff(path: Path, image, um_per_px: float) -> None:
    """A tiled pyramid (level 0 plus 2x reductions as SubIFDs), LZW, resolution tags in pixels per cm."""
    import numpy as np
    import tifffile
    from PIL import Image

    levels = [np.asarray(image)]
    while min(levels[-1].shape[:2]) >= 2 * MIN_LEVEL_PX:
        h, w = levels[-1].shape[:2]
        levels.append(np.asarray(Image.fromarray(levels[-1]).resize((w // 2, h // 2), Image.Resampling.BOX)))
    px_per_cm = 1.0 / (um_per_px * 1e-4)
    opts = dict(tile=(TILE_PX, TILE_PX), compression="lzw", photometric="rgb")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(px_per_cm, px_per_cm),
                  resolutionunit="CENTIMETER", **opts)
        for k, lvl in enumerate(levels[1:], start=1):
            res = px_per_cm / 2**k
            tif.write(lvl, subfiletype=1, resolution=(res, res), resolutionunit="CENTIMETER", **opts)


def build_smoke_hest_root(out: str | Path, sections: tuple[str, ...] = SMOKE_SECTIONS,
                          her2st_root: str | Path | None = None, say=print) -> Path:
    """Write (or reuse) the HEST-layout root ``out`` from her2st ``sections``; returns ``out``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    from ..readers import SampleMeta, read_sample

    out = Path(out)
    if her2st_root is None:
        from ..paths import DATA_ENV, data_dir

        root = data_dir(required=False)
        her2st_root = None if root is None else root / "her2st"
        if her2st_root is None or not (her2st_root / "ST-cnts").is_dir():
            raise StampInputError("the smoke run builds its HEST root from real her2st sections, not found", root,
                                  hint=f"set {DATA_ENV} to a folder holding her2st/ and vocab/ "
                                       "(`stamp-st download her2st`)")
    rows = []
    for sec in sections:
        sid = smoke_sample_id(sec)
        st_path, wsi_path, meta_path = out / "st" / f"{sid}.h5ad", out / "wsis" / f"{sid}.tif", \
            out / "metadata" / f"{sid}.json"
        if meta_path.is_file() and st_path.is_file() and wsi_path.is_file():
            rows.append(json.loads(meta_path.read_text()))
            continue
        a = read_sample(her2st_root, format="her2st", section=sec)
        meta = SampleMeta.of(a)
        if not meta.image_path:
            raise StampInputError(f"her2st section {sec} has no image", her2st_root,
                                  hint=f"choose imaged sections ({', '.join(SMOKE_SECTIONS)})")
        say(f"smoke data: {sid} ({a.n_obs} spots) -> {out}")
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(meta.image_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        xy = np.asarray(a.obsm["spatial"], np.float64)
        margin_px = MARGIN_UM / meta.slide_um_per_px
        x0, y0 = (max(int(v), 0) for v in np.floor(xy.min(0) - margin_px))
        x1, y1 = (int(v) for v in np.ceil(xy.max(0) + margin_px))
        rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        xy = xy - [x0, y0]
        obs = pd.DataFrame({"in_tissue": a.obs["in_tissue"].astype(int).to_numpy(),
                            "array_row": a.obs["array_row"].to_numpy(), "array_col": a.obs["array_col"].to_numpy(),
                            "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]},
                           index=pd.Index(a.obs_names.astype(str)))
        st = ad.AnnData(X=sp.csr_matrix(a.X, dtype=np.float32), obs=obs,
                        var=pd.DataFrame(index=pd.Index(a.var_names.astype(str))))
        st.obsm["spatial"] = xy
        st_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(st_path) as tmp:
            st.write_h5ad(tmp)
        wsi_path.parent.mkdir(parents=True, exist_ok=True)
        write_pyramidal_tiff(wsi_path, rgb, meta.slide_um_per_px)
        row = {"dataset_title": "her2st (Andersson et al. 2021), written in HEST's layout for the smoke run",
               "id": sid, "image_filename": wsi_path.name, "organ": "Breast", "disease_state": "Cancer",
               "oncotree_code": "IDC", "species": "Homo sapiens", "patient": f"Patient {sec[0]}",
               "st_technology": "Spatial Transcriptomics", "inter_spot_dist": meta.spot_pitch_um,
               "spot_diameter": meta.spot_diameter_um, "spots_under_tissue": int(a.n_obs),
               "preservation_method": "Fresh Frozen", "nb_genes": int(a.n_vars), "pixel_size_um_embedded": None,
               "pixel_size_um_estimated": meta.slide_um_per_px, "fullres_px_width": int(rgb.shape[1]),
               "fullres_px_height": int(rgb.shape[0]), "tissue": "Breast", "subseries": sec}
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta_path, json.dumps(row))  # last: its presence marks the sample complete
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(HEST_COLUMNS))
    atomic_write_text(out / METADATA_CSV, table.to_csv(index=False))
    return out
