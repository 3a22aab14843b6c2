"""stamp-st against the authors' released code, side by side, on the same inputs and the same torch.

    python benchmarks/bench_vs_release.py --release-src /path/to/STAMP [--cases tokenizer,stage1,...]

The authors' code is imported from ``--release-src`` (a clone of https://github.com/Hanminghao/STAMP; its
``src/`` folder, or the clone's root) and never copied into this repository. Each case runs two persistent
worker processes, one per implementation, so that each one's peak RSS is its own; the parent sends them steps
in turn (ours, release, release, ours, ...: the order alternates every round), so machine noise hits both
alike, and prints the ratio of the median step times (wall clock, and the workers' CPU time, which is steadier
on a busy machine; run ``--threads 1`` there so that it counts work, not threads spinning). Results go to ``benchmarks/results/vs_release_<host>.json``
(or ``--json``).

Cases (defaults: the reference gene encoder, 12 x 512, context 1,500; full-length spots):

- ``tokenizer``: the release's pipeline (``np.nan_to_num``, ``sf_normalize``, divide by the gene divisors,
  ``tokenize_data``; as in its ``tokenize_and_encode.py``, context 1,500) vs ``RankTokenizer`` on the same
  real her2st spots (vocabulary-aligned counts, the same divisors). Output check: tokens equal, and where
  they differ, only in the order of genes whose value ties in the release's own arithmetic (its argsort is
  unstable; ours breaks ties by vocabulary index).
- ``stage1``: one training step (forward, backward, AdamW), IGR, ``--stage1-batch`` spots (4); the release's
  ``VisiumformerSatial.training_step`` with its ``configure_optimizers`` AdamW vs ``GenePretrainModel`` with the
  engine's optimizer, gradient clipping and precision ("auto": bf16 autocast where the CPU has native bf16).
- ``stage1_cgr``: the same with the spatial objective on one group of 9 spots (release: ``spatial_aware=True``).
- ``embed``: pooled gene embeddings of 16 spots, no gradients: the release's ``Stamp.encode_gene`` vs
  ``GeneEncoder.embed``.
- ``stage2_vits`` / ``stage2_vitl``: one Stage-2 step with a frozen gene encoder (the paper's setting),
  ViT-S/16 or ViT-L/16 (UNI's shape, random weights), ``--stage2-batch`` items of 2 spots (16 / 4): the
  release's ``Stamp.training_step`` (gene encoder forward every step) vs our ``StampModel`` with the frozen
  encoder's features computed once per spot (that one-off fill is timed separately as ``setup_s``, and the
  ratio is also given with it spread over 1 and 30 epochs: each spot is seen once per epoch).

Shims, all here and only what the release's modules need to import and run without Lightning:
``pytorch_lightning`` is replaced by a stub whose ``LightningModule`` is ``nn.Module`` plus
``save_hyperparameters`` (records the ``__init__`` arguments as ``hparams``), ``log`` (no-op) and ``device``.
For Stage 2 the release's ``Stamp`` is built around a given timm ViT (its constructor only builds UNI's ViT-L
and would load weights); the modules it creates are the ones its constructor creates, and its own
``on_after_batch_transfer`` / ``training_step`` / ``configure_optimizers``-style AdamW run unchanged. The
release runs in fp32 (its code sets no precision; ``--release-precision bf16`` runs it under bf16 autocast,
what Lightning's ``bf16-mixed`` would do).

``FLOPS_PER_SPOT`` below gives the model FLOPs (matrix multiplies, forward + backward = 3 x forward) of each
case per spot, so a GPU run can report model FLOP utilisation: spots/s x FLOPs per spot / peak FLOP/s.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

CASES = ("tokenizer", "stage1", "stage1_cgr", "embed", "stage2_vits", "stage2_vitl")
HOW_TO_GET = ("the authors' code is needed: git clone https://github.com/Hanminghao/STAMP /some/folder, then\n"
              "    python benchmarks/bench_vs_release.py --release-src /some/folder\n"
              "(never inside this repository)")
REF = {"d": 512, "layers": 12, "heads": 16, "d_ff": 1024, "context": 1500, "vocab": 20_310, "offset": 30}
VITS = {"timm": "vit_small_patch16_224", "d": 384, "layers": 12, "d_ff": 1536}
VITL = {"timm": "vit_large_patch16_224", "d": 1024, "layers": 24, "d_ff": 4096}


# ====================================================================== FLOPs (for MFU on a GPU)
def encoder_fwd_flops_per_token(d: int, layers: int, d_ff: int, seq: int) -> float:
    """Post-norm transformer layer, forward: QKV + output projections (8 d^2), MLP (4 d d_ff), attention
    scores and values (4 seq d), per token, times the layers."""
    return layers * (8 * d * d + 4 * d * d_ff + 4 * seq * d)


def flops_per_spot(case: str, mask_prob: float = 0.15) -> dict:
    """Model FLOPs per spot of one training step (3 x forward) or one inference pass, for both
    implementations: ``ours`` computes the 20,340-way heads only where a loss reads them, the release at every
    position. Stage 2: the image side only (the frozen gene encoder's cached features cost nothing per step;
    the release's per-step gene encoder forward is counted under ``release``)."""
    L, n_tok = REF["context"], REF["vocab"] + REF["offset"]
    enc = L * encoder_fwd_flops_per_token(REF["d"], REF["layers"], REF["d_ff"], L)
    head = 2 * REF["d"] * n_tok
    if case == "stage1":
        return {"ours": 3 * (enc + mask_prob * L * head), "release": 3 * (enc + L * head)}
    if case == "stage1_cgr":  # per spot of a group of 9: + the centre's CGR head at its L positions / 9
        return {"ours": 3 * (enc + mask_prob * L * head + L * head / 9),
                "release": 3 * (enc + L * head + L * head / 9)}
    if case == "embed":
        return {"ours": enc, "release": enc}
    if case in ("stage2_vits", "stage2_vitl"):
        v = VITS if case == "stage2_vits" else VITL
        n = 196 + 2  # patch tokens + CLS + the pretext token
        img = n * encoder_fwd_flops_per_token(v["d"], v["layers"], v["d_ff"], n) + 196 * 2 * 16 * 16 * 3 * v["d"]
        two_views = 2 * img  # the patch and its 3x3 region
        return {"ours": 3 * two_views, "release": 3 * two_views + enc}
    return {}


# ====================================================================== the release, imported with shims
class _HParams(dict):
    """Lightning's AttributeDict."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as err:
            raise AttributeError(k) from err

    def __setattr__(self, k, v):
        self[k] = v


def install_lightning_stub() -> None:
    """A ``pytorch_lightning`` module with just what the release's modules use (see the module docstring)."""
    if "pytorch_lightning" in sys.modules:
        return
    import torch
    from torch import nn

    class LightningModule(nn.Module):
        @property
        def hparams(self):
            return self.__dict__.setdefault("_stub_hparams", _HParams())

        def save_hyperparameters(self, *args, ignore=None, **kwargs):
            frame = inspect.currentframe().f_back
            code = frame.f_code
            names = code.co_varnames[1:code.co_argcount]  # the caller's __init__ arguments, without self
            hp = self.hparams
            for n in names:
                if n not in (ignore or ()):
                    hp[n] = frame.f_locals[n]

        def log(self, *args, **kwargs):
            pass

        @property
        def device(self):
            return next(self.parameters(), torch.zeros(())).device

    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = LightningModule
    sys.modules["pytorch_lightning"] = pl


def import_release(release_src: str | Path) -> types.SimpleNamespace:
    root = Path(release_src).resolve()
    src = root / "src" if (root / "src" / "models").is_dir() else root
    if not (src / "models" / "_visiumformer_saptial.py").is_file():
        raise SystemExit(f"{release_src}: no models/_visiumformer_saptial.py under it or its src/\n{HOW_TO_GET}")
    install_lightning_stub()
    sys.path.insert(0, str(src))
    import models._prompt_learner as rp  # noqa: PLC0415  (the release's modules)
    import models._stamp as rs  # noqa: PLC0415
    import models._utils as ru  # noqa: PLC0415
    import models._visiumformer_saptial as rv  # noqa: PLC0415

    return types.SimpleNamespace(src=src, utils=ru, vf=rv, stamp=rs, prompt=rp)


def release_gene_model(rel, spatial_aware: bool, masking_p: float):
    """The release's gene encoder with the reference config (``config_files/_config_finetune_stamp.py``)."""
    return rel.vf.VisiumformerSatial(
        dim_model=REF["d"], nheads=REF["heads"], dim_feedforward=REF["d_ff"], nlayers=REF["layers"], dropout=0.0,
        batch_first=True, masking_p=masking_p, n_tokens=REF["vocab"] + REF["offset"], context_length=REF["context"],
        lr=1e-4, decay=1e-4, warmup=1000, max_epochs=100_000, autoregressive=False, pool=None, learnable_pe=True,
        spatial_aware=spatial_aware)


def release_stamp(rel, vit_name: str):
    """The release's ``Stamp`` around a timm ViT built as its constructor builds UNI's (init_values=1e-5,
    num_classes=0, dynamic_img_size=True), with the same heads; its methods run unchanged."""
    import numpy as np
    import timm
    import torch
    from torch import nn

    Stamp = rel.stamp.Stamp

    class ReleaseStamp(Stamp):
        def __init__(self):
            nn.Module.__init__(self)
            self.spot_backbone = release_gene_model(rel, spatial_aware=False, masking_p=0.0)
            self.spot_backbone.hparams.masking_p = 0.0
            self.spot_projection = nn.Linear(REF["d"], 512)
            vit = timm.create_model(vit_name, img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                                    dynamic_img_size=True)
            self.visual_backbone = rel.prompt.VisionPromptLearnerUni(vit)
            self.patch_projection = nn.Linear(vit.embed_dim, 512)
            self.region_projection = nn.Linear(vit.embed_dim, 512)
            self.positioning_projection = nn.Linear(vit.embed_dim, 512)
            self.visual_backbone.train()
            self.temperature = 1.0
            self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
            self.hparams.update(extract_layers=[11], function_layers="mean", without_context=True, pool=None,
                                lr=1e-4, warmup=5000, max_epochs=1_226_446)

    return ReleaseStamp()


# ====================================================================== inputs (identical for both)
def gene_tokens(n_spots: int, seed: int = 1):
    """Full-length spots: each a random ranking of 1,500 distinct vocabulary genes (storage ids, 0 = padding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(REF["vocab"], generator=g)[:REF["context"]] + REF["offset"]
                        for _ in range(n_spots)])


def her2st_counts(n_spots: int):
    from bench_tokenizer import her2st_vocab_counts

    from stamp_st.preprocessing.vocab import GeneVocabulary

    vocab = GeneVocabulary.default()
    X, source = her2st_vocab_counts(vocab, n_spots)
    if X is None:
        raise SystemExit(f"tokenizer case: {source} (set STAMP_ST_DATA)")
    return vocab, X.astype("float32"), source


# ====================================================================== one worker = one implementation
class Worker:
    """Builds one case for one implementation; ``step()`` runs it once; ``finish()`` returns extras."""

    def __init__(self, impl: str, case: str, args):
        import torch

        torch.manual_seed(0)
        self.impl, self.case, self.args = impl, case, args
        self.info: dict = {}
        self.rel = import_release(args.release_src) if impl == "release" else None
        getattr(self, f"setup_{case.split('_')[0] if case.startswith('stage2') else case}")()

    # ---------------------------------------------------------------- tokenizer
    def setup_tokenizer(self):
        from stamp_st.preprocessing.tokenizer import RankTokenizer

        vocab, self.X, source = her2st_counts(self.args.spots)
        self.tok = RankTokenizer(vocab, context=REF["context"])
        self.divisors = self.tok.divisors
        self.info.update(input=source, spots=int(self.X.shape[0]))
        self.out = None

    def step_tokenizer(self):
        if self.impl == "ours":
            self.out = self.tok.tokenize_vocab_counts(self.X).tokens
            return
        import numpy as np

        u = self.rel.utils
        x = np.nan_to_num(self.X)  # tokenize_single_sample, verbatim but for the inputs
        x = u.sf_normalize(x)
        median_counts_per_gene = self.divisors.copy()
        median_counts_per_gene += median_counts_per_gene == 0
        out = x / median_counts_per_gene.reshape((1, -1))
        self.out = u.tokenize_data(out, REF["context"], REF["offset"])
        self.values = out  # for the tie check

    def finish_tokenizer(self, out_dir):
        import numpy as np
        import scipy.sparse as sp

        np.save(Path(out_dir) / f"{self.impl}_tokens.npy", self.out)
        if self.impl == "release":
            sp.save_npz(Path(out_dir) / "release_values.npz", sp.csr_matrix(self.values))

    # ---------------------------------------------------------------- Stage 1
    def setup_stage1(self, cgr: bool = False):
        import torch

        n = 9 if cgr else self.args.stage1_batch
        tokens = gene_tokens(n)
        self.info.update(spots=n, context=REF["context"], cgr=cgr)
        if self.impl == "release":
            self.model = release_gene_model(self.rel, spatial_aware=cgr, masking_p=0.15).train()
            self.opt = self.model.configure_optimizers()[0][0]
            self.batch = {"tokenized_gene": tokens[None] if cgr else tokens}
            self.amp = self.args.release_precision == "bf16"
        else:
            from stamp_st.models.gene_encoder import GeneEncoder
            from stamp_st.training.engine import TrainerConfig, build_optimizer, resolve_precision
            from stamp_st.training.gene_objectives import GenePretrainModel

            self.model = GenePretrainModel(GeneEncoder("reference"), cgr=cgr).train()
            self.tcfg = TrainerConfig(lr=1e-4, weight_decay=1e-4)
            self.opt = build_optimizer(self.model, self.tcfg, torch.device("cpu"))
            self.batch = {"tokens": tokens[None] if cgr else tokens}
            if cgr:
                self.batch["spot_valid"] = torch.ones(1, 9, dtype=torch.bool)
            self.amp = resolve_precision("auto", torch.device("cpu")) is not None
        self.info["bf16"] = self.amp

    def setup_stage1_cgr(self):
        self.setup_stage1(cgr=True)

    def step_stage1(self):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            if self.impl == "release":
                batch = self.model.on_after_batch_transfer({k: v.clone() for k, v in self.batch.items()}, 0)
                loss = self.model.training_step(batch, 0)
            else:
                loss = self.model(self.batch)["loss"]
        loss.backward()
        if self.impl == "ours":
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           self.tcfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    step_stage1_cgr = step_stage1

    # ---------------------------------------------------------------- gene embedding
    def setup_embed(self):
        import torch

        self.tokens = gene_tokens(self.args.embed_batch)
        self.info.update(spots=self.args.embed_batch, context=REF["context"])
        if self.impl == "release":
            vf = release_gene_model(self.rel, spatial_aware=False, masking_p=0.0).eval()
            self.shim = types.SimpleNamespace(
                spot_backbone=vf, hparams=_HParams(extract_layers=[11], function_layers="mean", without_context=True))
            self.amp = self.args.release_precision == "bf16"
        else:
            from stamp_st.models.gene_encoder import GeneEncoder
            from stamp_st.training.engine import resolve_precision

            self.enc = GeneEncoder("reference").eval()
            self.amp = resolve_precision("auto", torch.device("cpu")) is not None
        self.info["bf16"] = self.amp

    def step_embed(self):
        import torch

        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            if self.impl == "release":  # tokenize_and_encode.encode_embeddings -> Stamp.encode_gene
                self.rel.stamp.Stamp.encode_gene(self.shim, {"tokenized_gene": self.tokens.clone()})
            else:
                self.enc.embed(self.tokens)

    # ---------------------------------------------------------------- Stage 2
    def setup_stage2(self):
        import torch

        vit = VITS if self.case == "stage2_vits" else VITL
        items = self.args.stage2_batch or (16 if self.case == "stage2_vits" else 4)
        g = torch.Generator().manual_seed(1)
        tokens = gene_tokens(2 * items).reshape(items, 2, -1)
        u8 = {k: torch.randint(0, 256, (items, 2, px, px, 3), generator=g, dtype=torch.uint8)
              for k, px in (("patch", 224), ("region", 224), ("thumb", 16))}
        label = torch.randint(0, 9, (items, 2), generator=g)
        self.info.update(items=items, spots=2 * items, backbone=vit["timm"], gene_encoder="reference, frozen")
        if self.impl == "release":
            m = release_stamp(self.rel, vit["timm"]).train()
            m.spot_backbone.requires_grad_(False)  # frozen gene encoder (still run every step)
            self.model = m
            self.opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.001)  # its configure_optimizers

            def img(x):  # float, channels first, ImageNet-normalised (its dataset's transform)
                x = x.permute(0, 1, 4, 2, 3).float() / 255
                return (x - 0.5) / 0.25

            self.batch = {"tokenized_gene": tokens, "images": img(u8["patch"]), "images_aug": img(u8["region"]),
                          "ref": img(u8["thumb"]), "pos_label": label}
            self.amp = self.args.release_precision == "bf16"
        else:
            import warnings

            from stamp_st.models.backbones import create_backbone
            from stamp_st.models.gene_encoder import GeneEncoder
            from stamp_st.models.stamp import StampModel, precompute_gene_embeddings
            from stamp_st.training.align_task import AlignTask
            from stamp_st.training.engine import TrainerConfig, build_optimizer, resolve_precision

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bb = create_backbone(f"timm:{vit['timm']}", pretrained=False, img_size=224)
            m = StampModel(GeneEncoder("reference"), bb, freeze_gene_encoder=True).train()
            self.model = AlignTask(m)  # the losses
            self.amp = resolve_precision("auto", torch.device("cpu")) is not None
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
                feats = precompute_gene_embeddings(m, tokens.reshape(2 * items, -1))
            self.info["setup_s"] = time.perf_counter() - t0  # once per spot, not per step
            self.opt = build_optimizer(m, TrainerConfig(lr=1e-4, weight_decay=1e-3), torch.device("cpu"))
            self.batch = {**u8, "region_label": label, "region_valid": torch.ones(items, 2, dtype=torch.bool),
                          "gene_feat": feats.reshape(items, 2, -1), "tokens": None,
                          "xy_um": torch.rand(items, 2, 2, generator=g) * 5000,
                          "slide_id": [f"s{i % 4}" for i in range(items)]}
        self.info["bf16"] = self.amp
        self.info["trainable_params_m"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6

    def step_stage2(self):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            if self.impl == "release":
                batch = self.model.on_after_batch_transfer(dict(self.batch), 0)
                loss = self.model.training_step(batch)
            else:
                loss = self.model(self.batch)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- protocol
    def step(self):
        name = self.case if hasattr(self, f"step_{self.case}") else self.case.split("_")[0]
        getattr(self, f"step_{name}")()

    def finish(self, out_dir):
        fn = getattr(self, f"finish_{self.case}", None)
        if fn:
            fn(out_dir)


def worker_main(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    w = Worker(args.worker, args.case, args)
    send({"ready": True, "setup_s": time.perf_counter() - t0, "rss_gib": rss_gib(), **w.info})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t, c = time.perf_counter(), time.process_time()
            w.step()
            send({"s": time.perf_counter() - t, "cpu_s": time.process_time() - c})
        elif cmd.startswith("finish"):
            w.finish(cmd.split(" ", 1)[1])
            send({"peak_rss_gib": rss_gib()})
            return 0
    return 0


def send(obj) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ====================================================================== the parent
class Proc:
    def __init__(self, impl: str, case: str, args):
        cmd = [sys.executable, __file__, "--worker", impl, "--case", case, "--release-src", args.release_src,
               "--threads", str(args.threads), "--spots", str(args.spots), "--stage1-batch", str(args.stage1_batch),
               "--embed-batch", str(args.embed_batch), "--stage2-batch", str(args.stage2_batch),
               "--release-precision", args.release_precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads)}
        self.impl = impl
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self.recv()

    def recv(self) -> dict:
        for line in self.p.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self.p.wait()
        raise RuntimeError(f"{self.impl} worker exited with status {self.p.returncode}")

    def ask(self, cmd: str) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.recv()

    def close(self, out_dir) -> dict:
        res = self.ask(f"finish {out_dir}")
        self.p.stdin.close()
        self.p.wait()
        return res


def check_tokens(out_dir: Path) -> dict:
    """Equal tokens, or equal only up to the order of genes whose release values tie."""
    import numpy as np
    import scipy.sparse as sp

    ours, rel = np.load(out_dir / "ours_tokens.npy"), np.load(out_dir / "release_tokens.npy")
    same = (ours == rel).all(axis=1)
    res = {"spots": int(len(same)), "identical_spots": int(same.sum())}
    if not same.all():
        vals = sp.load_npz(out_dir / "release_values.npz").tocsr()
        ok = 0
        for i in np.flatnonzero(~same):
            row = vals[i].toarray().ravel()
            a, b = ours[i], rel[i]
            va = np.where(a > 0, row[np.maximum(a - REF["offset"], 0)], -1.0)
            vb = np.where(b > 0, row[np.maximum(b - REF["offset"], 0)], -1.0)
            # the same value at every rank (to float32 rounding, the release's arithmetic): tied genes swapped
            ok += bool(np.allclose(va, vb, rtol=1e-6, atol=0))
        res["differing_only_in_tied_order"] = int(ok)
    res["equivalent"] = res["identical_spots"] + res.get("differing_only_in_tied_order", 0) == res["spots"]
    return res


def run_case(case: str, args) -> dict:
    print(f"\n== {case}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        procs = {impl: Proc(impl, case, args) for impl in ("ours", "release")}
        for impl, pr in procs.items():
            print(f"  {impl}: ready, setup {pr.ready['setup_s']:.1f} s, {json.dumps({k: v for k, v in pr.ready.items() if k not in ('ready', 'setup_s', 'rss_gib')})}", flush=True)
        times = {"ours": [], "release": []}
        cpu = {"ours": [], "release": []}
        for r in range(args.warmup + args.steps):
            order = ("ours", "release") if r % 2 == 0 else ("release", "ours")
            for impl in order:
                ans = procs[impl].ask("step")
                if r >= args.warmup:
                    times[impl].append(ans["s"])
                    cpu[impl].append(ans["cpu_s"])
            last = {k: (f"{v[-1]:.3f} s" if r >= args.warmup else "warm-up") for k, v in times.items()}
            print(f"  round {r + 1}/{args.warmup + args.steps}: ours {last['ours']}, release {last['release']}",
                  flush=True)
        fin = {impl: pr.close(tmp) for impl, pr in procs.items()}
        check = check_tokens(Path(tmp)) if case == "tokenizer" else None
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    res = {"case": case, "median_s": med, "times_s": times, "ratio_release_over_ours": med["release"] / med["ours"],
           "median_cpu_s": med_cpu, "cpu_times_s": cpu,
           "cpu_ratio_release_over_ours": med_cpu["release"] / med_cpu["ours"],
           "peak_rss_gib": {k: fin[k]["peak_rss_gib"] for k in fin},
           "info": {k: {kk: vv for kk, vv in procs[k].ready.items() if kk != "ready"} for k in procs},
           "flops_per_spot": flops_per_spot(case)}
    if check is not None:
        res["output_check"] = check
    if case.startswith("stage2"):  # our one-off pass over the frozen gene encoder, spread over a run's epochs
        once = res["info"]["ours"]["setup_s"]
        res["ratio_with_gene_features_over_epochs"] = {
            str(e): med["release"] / (med["ours"] + once / e) for e in (1, 30)}
    print(f"  median ours {med['ours']:.3f} s, release {med['release']:.3f} s -> {res['ratio_release_over_ours']:.2f}x "
          f"(CPU time {med_cpu['ours']:.3f} vs {med_cpu['release']:.3f} s -> {res['cpu_ratio_release_over_ours']:.2f}x);"
          f" peak RSS ours {res['peak_rss_gib']['ours']:.2f} GiB, release {res['peak_rss_gib']['release']:.2f} GiB"
          + (f"; tokens {check}" if check else ""), flush=True)
    if "ratio_with_gene_features_over_epochs" in res:
        r = res["ratio_with_gene_features_over_epochs"]
        print(f"  with our one-off gene features ({res['info']['ours']['setup_s']:.1f} s for these spots) spread over "
              f"1 epoch: {r['1']:.2f}x, over the paper's 30: {r['30']:.2f}x", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release-src", help="a local clone of github.com/Hanminghao/STAMP (or its src/)")
    ap.add_argument("--cases", default=",".join(c for c in CASES if c != "stage2_vitl"),
                    help=f"comma-separated, from {','.join(CASES)}")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per implementation (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spots", type=int, default=5000, help="tokenizer: her2st spots")
    ap.add_argument("--stage1-batch", type=int, default=4, help="stage1: spots per step")
    ap.add_argument("--embed-batch", type=int, default=16)
    ap.add_argument("--stage2-batch", type=int, default=0, help="items of 2 spots (default 16 ViT-S, 4 ViT-L)")
    ap.add_argument("--release-precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--json", help="default benchmarks/results/vs_release_<host>.json")
    ap.add_argument("--worker", choices=["ours", "release"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.release_src:
        print(HOW_TO_GET, file=sys.stderr)
        return 2
    if args.worker:
        return worker_main(args)
    import_release(args.release_src)  # fail early, with the message, if the path is wrong
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - set(CASES))
    if bad:
        ap.error(f"unknown cases {bad}; choose from {','.join(CASES)}")
    import torch

    results = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": args.threads, "release_precision": args.release_precision,
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "started": time.strftime("%FT%TZ", time.gmtime()),
               "cases": []}
    out = Path(args.json) if args.json else HERE / "results" / f"vs_release_{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for case in cases:
        results["cases"].append(run_case(case, args))
        out.write_text(json.dumps(results, indent=2) + "\n")  # after every case: a long run keeps what it did
    print("\ncase          ours s   release s   release/ours   CPU-time ratio   peak RSS ours / release GiB")
    for r in results["cases"]:
        print(f"{r['case']:12s} {r['median_s']['ours']:8.3f} {r['median_s']['release']:10.3f} "
              f"{r['ratio_release_over_ours']:13.2f}x {r['cpu_ratio_release_over_ours']:15.2f}x   "
              f"{r['peak_rss_gib']['ours']:.2f} / {r['peak_rss_gib']['release']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
