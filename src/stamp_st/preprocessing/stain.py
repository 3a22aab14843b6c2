"""Stain augmentation in the haematoxylin-eosin-DAB (HED) space (Tellez et al., Med Image Anal 2019, "HED
jitter"): each HED channel of an RGB image is scaled by 1 + U(-scale, scale) and shifted by U(-shift, shift)
(in the units of ``skimage.color.rgb2hed``, where a her2st patch's haematoxylin runs from about 0.02 to 0.23),
one draw per image. It stands in for the stain and scanner variation between laboratories that a few
training slides do not show. ``rgb2hed`` clips negative stain amounts, so even a null jitter moves pixels
whose colour is not a mix of the three stains (a few grey levels on average on her2st patches)."""

from __future__ import annotations

import numpy as np


def hed_jitter_params(n: int, scale: float, shift: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(scale factors [n, 3], shifts [n, 3]) for ``n`` images."""
    return rng.uniform(1 - scale, 1 + scale, (n, 3)), rng.uniform(-shift, shift, (n, 3))


def hed_jitter(images: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> uint8 RGB, each image's HED channels scaled and shifted by its row of
    ``scale`` / ``shift`` [N, 3]."""
    from skimage.color import hed2rgb, rgb2hed

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {images.shape}")
    out = np.empty_like(images)
    for i, img in enumerate(images):
        hed = rgb2hed(img)
        rgb = hed2rgb(hed * scale[i] + shift[i])
        out[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return out
