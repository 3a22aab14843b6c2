"""Caches of Stage 2's frozen parts: their outputs per spot (key: slide id + spot id), computed on first sight
and reused, so a frozen gene encoder, a frozen CNN backbone or a frozen CNN trunk runs once per spot instead of
once per spot and epoch. Each cache replaces batch entries with the ones ``training.align_task.AlignTask``
maps onto the model's cached-feature keywords; the caches own no model code beyond calling the frozen part."""

from __future__ import annotations

import torch

from ..models.stamp import StampModel


class SpotFeatureCache:
    """Outputs of a frozen module per spot (key: slide id + spot id), computed on first sight and reused.

    Exactly what the model would compute every step (the module is frozen and in eval mode), at a fraction
    of the cost: it runs once per spot instead of once per spot and epoch. Subclasses say which batch
    entries they read (``inputs``, [B, 2, ...]) and which they put in their place. Beyond ``max_bytes`` new
    spots are computed but not stored, so a corpus too large to cache stays correct, only slower."""

    inputs: tuple[str, ...] = ()

    def __init__(self, max_bytes: float = float("inf")):
        self.features: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = self.misses = 0
        self.bytes, self.max_bytes = 0, max_bytes

    def compute(self, model: StampModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fill(self, batch: dict, model: StampModel, train: bool = False) -> dict:
        """``batch`` with the cached outputs in place of the inputs (fp32 features, outside any autocast).
        ``train``: a training batch (a cache of augmented copies draws one; otherwise the plain one)."""
        with torch.autocast(model.logit_scale.device.type, enabled=False):
            return self.pick(self._fill(batch, model), train)

    def pick(self, batch: dict, train: bool) -> dict:
        return batch

    def _fill(self, batch: dict, model: StampModel) -> dict:
        keys = [f"{sid}\x00{spot}" for sid, pair in zip(batch["slide_id"], batch["spot_id"]) for spot in pair]
        shape = batch[self.inputs[0]].shape[:2]
        todo = [i for i, k in enumerate(keys) if k not in self.features]
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        if todo:
            flat = {n: batch[n].reshape(len(keys), *batch[n].shape[2:])[todo] for n in self.inputs}
            with torch.no_grad():
                out = self.compute(model, flat)
            for j, i in enumerate(todo):
                row = {n: v[j].clone() for n, v in out.items()}
                fresh[i] = row
                size = sum(v.numel() * v.element_size() for v in row.values())
                if self.bytes + size <= self.max_bytes:
                    self.features[keys[i]] = row
                    self.bytes += size
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        rows = [fresh[i] if i in fresh else self.features[k] for i, k in enumerate(keys)]
        filled = {n: torch.stack([r[n] for r in rows]).reshape(*shape, *rows[0][n].shape) for n in rows[0]}
        return {**batch, **filled, **{n: None for n in self.inputs}}

    def stats(self) -> dict:
        return {"spots": len(self.features), "hits": self.hits, "misses": self.misses, "bytes": self.bytes}


class GeneFeatureCache(SpotFeatureCache):
    """Pooled features of a frozen gene encoder (``tokens`` -> ``gene_feat``)."""

    inputs = ("tokens",)

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        feat = model.gene_features(inputs["tokens"].to(dev))
        return {"gene_feat": feat.float().cpu()}


class ImageFeatureCache(SpotFeatureCache):
    """A frozen CNN backbone's patch feature and region feature map (``patch``, ``region`` ->
    ``patch_feat``, ``region_map``): the pretext query, heads and temperature still train on top. Maps are
    kept in float16 (EfficientNet-Lite0 at 224 px: 7 x 7 x 1280, 125 kB a spot)."""

    inputs = ("patch", "region")

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        vb = model.visual_backbone
        patch_f = vb.forward_patch(model.prepare_images(inputs["patch"].to(dev)))
        fmap = vb.region_map(model.prepare_images(inputs["region"].to(dev)))
        return {"patch_feat": patch_f.float().cpu(), "region_map": fmap.half().cpu()}


class TrunkFeatureCache(SpotFeatureCache):
    """Partial fine-tuning of a CNN: the frozen trunk's maps of the patch and the region (``patch``,
    ``region`` -> ``patch_trunk``, ``region_trunk``, float16); the last blocks, conv head, pretext query and
    heads train on top, so a step costs the tail's forward and backward only. Rotations / mirrorings are
    then applied to the cached patch map (``augment="dihedral"``).

    With HED stain jitter (``hed_scale`` / ``hed_shift`` > 0) the cache holds ``variants`` maps per crop:
    the plain one first, then jittered copies (one draw per spot for patch and region, from a generator
    seeded by ``seed``); a training batch takes one of them at random per spot, any other batch the plain one."""

    inputs = ("patch", "region")

    def __init__(self, max_bytes: float = float("inf"), hed_scale: float = 0.0, hed_shift: float = 0.0,
                 variants: int = 1, seed: int = 0):
        super().__init__(max_bytes)
        jitter = hed_scale > 0 or hed_shift > 0
        self.hed_scale, self.hed_shift = hed_scale, hed_shift
        self.variants = int(variants) if jitter else 1
        self._rng = None
        if jitter:
            import numpy as np

            self._rng = np.random.default_rng(seed)

    def compute(self, model, inputs):
        dev = model.logit_scale.device
        vb = model.visual_backbone
        if self.variants == 1:
            return {"patch_trunk": vb.trunk(model.prepare_images(inputs["patch"].to(dev))).half().cpu(),
                    "region_trunk": vb.trunk(model.prepare_images(inputs["region"].to(dev))).half().cpu()}
        from ..preprocessing.stain import hed_jitter, hed_jitter_params

        out: dict[str, list[torch.Tensor]] = {"patch_trunk": [], "region_trunk": []}
        n = inputs["patch"].shape[0]
        for v in range(self.variants):
            if v:
                scale, shift = hed_jitter_params(n, self.hed_scale, self.hed_shift, self._rng)
            for k in ("patch", "region"):
                x = inputs[k]
                if v:
                    x = torch.from_numpy(hed_jitter(x.cpu().numpy(), scale, shift))
                out[f"{k}_trunk"].append(vb.trunk(model.prepare_images(x.to(dev))).half().cpu())
        return {k: torch.stack(v, dim=1) for k, v in out.items()}  # [n, variants, C, h, w]

    def pick(self, batch: dict, train: bool) -> dict:
        if self.variants == 1:
            return batch
        p = batch["patch_trunk"]  # [B, 2, variants, C, h, w]
        choice = (torch.randint(0, self.variants, p.shape[:2]) if train
                  else torch.zeros(p.shape[:2], dtype=torch.long))
        idx = choice.view(*choice.shape, 1, 1, 1, 1).expand(*p.shape[:2], 1, *p.shape[3:])
        return {**batch, **{k: batch[k].gather(2, idx).squeeze(2) for k in ("patch_trunk", "region_trunk")}}


class CachedBatches:
    """Wraps a loader: every batch goes through the caches; epochs pass through."""

    def __init__(self, loader, model: StampModel, caches: list[SpotFeatureCache], train: bool = False):
        self.loader, self.model, self.caches, self.train = loader, model, caches, train

    def set_epoch(self, epoch: int) -> None:
        ds = getattr(self.loader, "dataset", self.loader)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            for cache in self.caches:
                batch = cache.fill(batch, self.model, train=self.train)
            yield batch
