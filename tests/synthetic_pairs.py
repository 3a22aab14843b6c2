"""Synthetic Stage-2 data for tests: the paired corpus's item contract in memory, and a small paired corpus on disk."""

from __future__ import annotations

import torch


class SyntheticPairs(torch.utils.data.IterableDataset):
    """In-memory Stage-2 batches with the corpus contract, where image colour encodes the spot's gene
    program, so alignment is learnable. Order is a pure function of (seed, epoch)."""

    def __init__(self, n_items: int = 32, img_px: int = 64, context: int = 32, vocab_size: int = 200,
                 batch_size: int = 4, seed: int = 0):
        import numpy as np

        from stamp_st.preprocessing.tokenizer import STORAGE_PAD_ID, TOKEN_OFFSET

        self.n_items, self.batch_size, self.seed, self.epoch = n_items, batch_size, seed, 0
        rng = np.random.default_rng(seed)
        programs = np.stack([rng.permutation(vocab_size) for _ in range(4)])
        colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], np.uint8)
        self.items = []
        for i in range(n_items):
            pair = {}
            progs = [rng.integers(0, 4), rng.integers(0, 4)]
            toks = np.full((2, context), STORAGE_PAD_ID, np.int64)
            for s, p in enumerate(progs):
                order = programs[p][np.argsort(np.arange(vocab_size) + rng.normal(0, 3, vocab_size))]
                toks[s] = order[:context] + TOKEN_OFFSET
            img = np.stack([np.broadcast_to(colours[p], (img_px, img_px, 3)) for p in progs]).copy()
            img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            pair["patch"] = torch.from_numpy(img)
            pair["region"] = torch.from_numpy(img.copy())
            pair["thumb"] = torch.from_numpy(img[:, :16, :16].copy())
            pair["region_label"] = torch.from_numpy(rng.integers(0, 9, 2))
            pair["region_valid"] = torch.tensor([True, bool(i % 3)])
            pair["tokens"] = torch.from_numpy(toks)
            pair["xy_um"] = torch.from_numpy(rng.uniform(0, 3000, (2, 2)).astype(np.float32))
            pair["slide_id"] = f"syn{i % 2}"
            pair["spot_id"] = [f"a{i}", f"b{i}"]
            self.items.append(pair)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import numpy as np

        from stamp_st.corpus.datasets import collate_pairs

        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        for i in range(0, self.n_items - self.batch_size + 1, self.batch_size):
            yield collate_pairs([self.items[int(j)] for j in order[i:i + self.batch_size]])


def synthetic_paired_corpus(tmp_path_factory):
    """(corpus folder, its samples' rows): two synthetic Visium-like slides built into a paired corpus."""
    from synthetic_slides import small_corpus

    tmp = tmp_path_factory.mktemp("paired_src")
    out = tmp_path_factory.mktemp("paired")
    rows = small_corpus(tmp, out, "paired")
    return out, rows
