"""File names, column names and geometry of the input formats, in one place so that a format change is a
one-line edit and reader bodies hold no string literals."""

from __future__ import annotations

# ------------------------------------------------------------------ formats
FORMAT_SPACERANGER = "spaceranger"
FORMAT_HEST = "hest"
FORMAT_HER2ST = "her2st"
FORMAT_H5AD = "h5ad"

# ------------------------------------------------------------------ grid geometry (µm)
GRID_HEX = "hex"
GRID_SQUARE = "square"
VISIUM_SPOT_PITCH_UM = 100.0  # centre-to-centre distance of neighbouring Visium spots
VISIUM_SPOT_DIAMETER_UM = 55.0
LEGACY_ST_SPOT_PITCH_UM = 200.0  # legacy ST (her2st): 100 µm spots on a 200 µm square grid
LEGACY_ST_SPOT_DIAMETER_UM = 100.0
# array-coordinate step between grid neighbours along a row: Visium's hex grid skips every other column
HEX_COL_STEP = 2
SQUARE_COL_STEP = 1

# where a pixel size came from (uns["stamp_st"]["um_per_px_source"])
UM_PER_PX_USER = "user"
UM_PER_PX_METADATA = "metadata"
UM_PER_PX_SPOT_PITCH = "spot_pitch"
UM_PER_PX_SPOT_DIAMETER = "spot_diameter"
UM_PER_PX_SLIDE = "slide"  # the slide file's own resolution tag (whole-slide tiling, crops without a sample)
UM_PER_PX_NONE = "none"

# a positions extent this many times larger than the image means the image is a downscaled copy
IMAGE_SCALE_MISMATCH_FACTOR = 1.5

# ------------------------------------------------------------------ AnnData contract keys
OBS_ARRAY_ROW = "array_row"
OBS_ARRAY_COL = "array_col"
OBS_IN_TISSUE = "in_tissue"
VAR_GENE_IDS = "gene_ids"
OBSM_SPATIAL = "spatial"
UNS_STAMP = "stamp_st"
UNS_SPATIAL = "spatial"
# scanpy's uns["spatial"][library_id] layout (read_visium), kept so that scanpy's plotting works on our samples
UNS_SPATIAL_IMAGES = "images"
UNS_SPATIAL_SCALEFACTORS = "scalefactors"
UNS_SPATIAL_METADATA = "metadata"
LAYER_COUNTS = "counts"

# ------------------------------------------------------------------ Space Ranger
SR_OUTS_DIR = "outs"
SR_SPATIAL_DIR = "spatial"
SR_FILTERED_H5 = "filtered_feature_bc_matrix.h5"
# the same matrix as Market Exchange files (GEO and most repositories ship this instead of the .h5)
SR_FILTERED_MTX_DIR = "filtered_feature_bc_matrix"
SR_MTX_FILES = ("matrix.mtx.gz", "matrix.mtx")
SR_POSITIONS_V1 = "tissue_positions_list.csv"  # Space Ranger 1.x: no header
SR_POSITIONS_V2 = "tissue_positions.csv"  # Space Ranger >= 2.0: header row
SR_POSITIONS_PARQUET = "tissue_positions.parquet"  # Space Ranger >= 3 (Visium HD bins)
SR_BINNED_DIR = "binned_outputs"  # Visium HD: binned_outputs/square_002um|square_008um|square_016um/
SR_DEFAULT_BIN = "square_016um"
SF_BIN_SIZE_UM = "bin_size_um"  # Visium HD scale factors
SF_MICRONS_PER_PIXEL = "microns_per_pixel"
SR_SCALEFACTORS = "scalefactors_json.json"
SR_HIRES_IMAGE = "tissue_hires_image.png"
SR_LOWRES_IMAGE = "tissue_lowres_image.png"
SR_COL_BARCODE = "barcode"
SR_COL_IN_TISSUE = "in_tissue"
SR_COL_ARRAY_ROW = "array_row"
SR_COL_ARRAY_COL = "array_col"
SR_COL_PXL_ROW = "pxl_row_in_fullres"  # y
SR_COL_PXL_COL = "pxl_col_in_fullres"  # x
SR_POSITION_COLUMNS = (SR_COL_BARCODE, SR_COL_IN_TISSUE, SR_COL_ARRAY_ROW, SR_COL_ARRAY_COL,
                       SR_COL_PXL_ROW, SR_COL_PXL_COL)
SF_SPOT_DIAMETER = "spot_diameter_fullres"
SF_FIDUCIAL_DIAMETER = "fiducial_diameter_fullres"
SF_HIRES = "tissue_hires_scalef"
SF_LOWRES = "tissue_lowres_scalef"
SR_IMAGE_KEYS = {"hires": SR_HIRES_IMAGE, "lowres": SR_LOWRES_IMAGE}
SR_H5_SOFTWARE_ATTR = "software_version"

# ------------------------------------------------------------------ HEST-1k
HEST_ST_DIR = "st"
HEST_WSI_DIR = "wsis"
HEST_METADATA_DIR = "metadata"
HEST_H5AD_SUFFIX = ".h5ad"
HEST_WSI_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif")
HEST_METADATA_SUFFIX = ".json"
HEST_PIXEL_SIZE_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
HEST_TECHNOLOGY_KEY = "st_technology"
HEST_SPOT_DIAMETER_KEY = "spot_diameter"
HEST_SPOT_PITCH_KEY = "inter_spot_dist"
HEST_LEGACY_ST_TECHNOLOGIES = ("spatial transcriptomics", "st")
HEST_VISIUM_PREFIX = "visium"
HEST_VISIUM_HD = "visium hd"

# ------------------------------------------------------------------ her2st (legacy ST, Andersson et al. 2021)
HER2ST_COUNTS_DIR = "ST-cnts"
HER2ST_COUNTS_SUFFIX = ".tsv.gz"
HER2ST_SPOTS_DIR = "ST-spotfiles"
HER2ST_SPOTS_SUFFIX = "_selection.tsv"
HER2ST_IMAGES_DIR = "ST-imgs"
HER2ST_IMAGE_GLOB = "*.jpg"
HER2ST_SPOT_ID_SEP = "x"  # spot id "<x>x<y>" in array coordinates
HER2ST_COL_X = "x"
HER2ST_COL_Y = "y"
HER2ST_COL_PIXEL_X = "pixel_x"
HER2ST_COL_PIXEL_Y = "pixel_y"
HER2ST_COL_SELECTED = "selected"
HER2ST_CLUSTER_DIR = ("ST-cluster", "lbl")
HER2ST_CLUSTER_SUFFIX = "-cluster-annotation.tsv.gz"
HER2ST_CLUSTER_NAMES = ("ST-cluster", "motivation.csv")
HER2ST_CLUSTER_COL_LABEL = "label"
HER2ST_PATHOLOGIST_DIR = ("ST-pat", "lbl")
HER2ST_PATHOLOGIST_SUFFIX = "_labeled_coordinates.tsv"
HER2ST_PATHOLOGIST_COL_LABEL = "label"

# ------------------------------------------------------------------ generic h5ad
H5AD_SUFFIX = ".h5ad"
# var columns that may hold gene symbols when var_names are Ensembl ids
VAR_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "symbol", "symbols", "gene_name", "gene_names",
                      "feature_name", "name")
VAR_ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl", "feature_id", "id")
