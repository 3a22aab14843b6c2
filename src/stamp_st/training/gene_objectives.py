"""Stage-1 pretraining task (METHOD.md §4) on top of the gene encoder: IGR (masked-gene recovery inside a
spot) and CGR (a spot's genes from its neighbours). The task owns the masking, the losses, the phase
switching and the batch layout; the model (``models.gene_encoder.GeneEncoder``) only returns hidden states.

The objectives compute vocabulary logits only where a loss reads them: the release computes the 20,340-way
head at every position, which dominates its training cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum, rank_rows
from ..errors import StampInputError
from ..models.gene_encoder import GeneEncoder
from ..preprocessing.tokenizer import MASK_ID, STORAGE_PAD_ID, TOKEN_OFFSET
from .schedule import phase_at


def mask_noise(shape, n_tokens: int, device, generator: torch.Generator | None = None):
    """The draws of ``mask_tokens``: (selection uniforms, replacement uniforms, random gene ids)."""
    return (torch.rand(shape, device=device, generator=generator), torch.rand(shape, device=device, generator=generator),
            torch.randint(TOKEN_OFFSET, n_tokens, shape, device=device, generator=generator))


def mask_tokens(tokens: torch.Tensor, pad: torch.Tensor, n_tokens: int, mask_prob: float = 0.15,
                generator: torch.Generator | None = None, noise=None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption: select ``mask_prob`` of the non-padding tokens; of those 80 % become the mask id,
    10 % a random gene id, 10 % stay. Returns (corrupted tokens, selected bool mask). ``noise``: the draws
    (``mask_noise``) made beforehand, e.g. for the global batch."""
    u_sel, r, rand_ids = noise if noise is not None else mask_noise(tokens.shape, n_tokens, tokens.device, generator)
    sel = (u_sel < mask_prob) & ~pad
    out = torch.where(sel & (r < 0.8), torch.full_like(tokens, MASK_ID), tokens)
    out = torch.where(sel & (r >= 0.8) & (r < 0.9), rand_ids, out)
    return out, sel


class GenePretrainModel(nn.Module):
    """IGR (+ CGR) on groups of 9 spots: ``forward(batch)`` -> dict with the scalar ``loss`` and metrics.

    ``batch``: ``tokens`` int64 [B, 9, L] storage ids (centre first), ``spot_valid`` bool [B, 9]. Every valid
    spot is encoded once (IGR-corrupted); CGR averages the valid neighbours' last hidden states position by
    position and predicts the centre's (uncorrupted) tokens at its non-padding positions.
    ``logits="full"`` computes the heads at every position first, as the release does (benchmark baseline).

    ``length_buckets`` > 1: the batch's spots are encoded in that many groups of similar length, each trimmed
    (``GeneEncoder.encode_bucketed``), instead of all at the longest spot's length: the same batches, masks
    and losses (a padding key is masked out), less attention spent on padding. A spot is computed up to its
    own length, a CGR neighbour up to its centre's length too (CGR averages the neighbours' hidden states at
    every position of the centre, their padding positions included, as the release does).
    """

    checkpoint_prefix = "encoder."

    def __init__(self, encoder: GeneEncoder, mask_prob: float = 0.15, cgr: bool = True, logits: str = "gathered",
                 trim: bool = True, phases: list[dict] | None = None, length_buckets: int = 4):
        super().__init__()
        self.encoder = encoder
        self.mask_prob = mask_prob
        self.cgr = cgr
        self.logits = logits
        self.trim = trim
        self.length_buckets = int(length_buckets)
        self.phases = phases  # e.g. [{"epochs": 1, "cgr": False}, {"epochs": 1, "cgr": True}]
        self.ddp_find_unused_parameters = True  # the CGR head is idle in the IGR-only phase
        self._noise_seed: int | None = None  # set by the engine each step: masks drawn for the global batch
        self._noise: torch.Generator | None = None
        if (cgr or any(p.get("cgr") for p in phases or [])) and encoder.cgr_head is None:
            raise StampInputError("CGR needs a gene encoder config with cgr_head: true")

    def on_train_step(self, step: int, epoch: int) -> None:
        """Engine hook: switch CGR on or off by the phase schedule."""
        if self.phases:
            self.cgr = bool(phase_at(self.phases, step, epoch)[1].get("cgr", True))

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.encoder.encoder.layers)

    def seed_batch_noise(self, seed: int) -> None:
        """Engine hook: the step's seed, the same on every rank (masks of the global batch, cut to this rank's)."""
        self._noise_seed = int(seed)
        self._noise = None

    def _global_mask_noise(self, shape: tuple[int, ...], device) -> tuple[torch.Tensor, ...] | None:
        """Masking draws for this rank's groups, cut from the draws for every rank's (``rank_rows``)."""
        if self._noise_seed is None or not self.training:
            return None
        if self._noise is None or self._noise.device != torch.device(device):
            self._noise = torch.Generator(device=device)
            self._noise.manual_seed(self._noise_seed)
        rows, total = rank_rows(shape[0])
        return tuple(t[rows] for t in mask_noise((total, *shape[1:]), self.encoder.config.n_tokens, device,
                                                 self._noise))

    def no_weight_decay(self) -> set[str]:
        return {"encoder." + n for n in self.encoder.no_weight_decay()}

    def forward(self, batch: dict) -> dict:
        enc = self.encoder
        tokens = batch["tokens"][..., : enc.config.context]
        if tokens.dim() == 2:  # plain spots: IGR only
            tokens = tokens[:, None]
        B, G, _ = tokens.shape
        valid = batch.get("spot_valid")
        valid = torch.ones(B, G, dtype=torch.bool, device=tokens.device) if valid is None else valid.bool()
        pad = tokens == STORAGE_PAD_ID
        valid = valid & ~pad.all(dim=-1)
        noise = self._global_mask_noise(tuple(tokens.shape), tokens.device)
        if self.trim:  # padding past the longest spot changes nothing (key-padding mask): drop it
            L = max(int((~pad).sum(-1).max()), 1)
            tokens, pad = tokens[..., :L], pad[..., :L]
        L = tokens.shape[-1]
        flat_tok, flat_pad = tokens[valid], pad[valid]  # [N, L]
        if noise is not None:
            noise = tuple(t[..., :L][valid] for t in noise)
        corrupted, sel = mask_tokens(flat_tok, flat_pad, enc.config.n_tokens, self.mask_prob, noise=noise)
        if self.length_buckets > 1:
            lens = (~pad).sum(-1)  # [B, G]
            need = lens.clone()
            if self.cgr and G > 1:
                need[:, 1:] = torch.maximum(lens[:, 1:], lens[:, :1])
            hidden = enc.encode_bucketed(corrupted, flat_pad, need[valid], self.length_buckets)
        else:
            hidden = enc.encode(corrupted, flat_pad)  # [N, L, d]

        out = {}
        head = enc.classifier_head
        if self.logits == "full":
            igr_loss, igr_acc = _ce_and_acc(head(hidden)[sel], flat_tok[sel], hidden)
        else:
            igr_loss, igr_acc = head_ce_and_acc(head, hidden[sel], flat_tok[sel], hidden)
        igr_loss, igr_acc = self._global_mean(igr_loss, igr_acc, sel.sum())
        out.update(igr_loss=igr_loss, igr_acc=igr_acc, igr_tokens=sel.sum().float())
        loss = igr_loss

        if self.cgr and G > 1:
            grouped = hidden.new_zeros(B, G, L, hidden.shape[-1])
            grouped[valid] = hidden
            nb = valid[:, 1:].to(hidden.dtype)  # [B, 8]
            n_nb = nb.sum(1)
            use = valid[:, 0] & (n_nb > 0)
            mean_nb = (grouped[:, 1:] * nb[:, :, None, None]).sum(1) / n_nb.clamp_min(1)[:, None, None]
            tgt_pos = use[:, None] & ~pad[:, 0]  # [B, L] centre's non-padding positions
            if self.logits == "full":
                cgr_loss, cgr_acc = _ce_and_acc(enc.cgr_head(mean_nb)[tgt_pos], tokens[:, 0][tgt_pos], hidden)
            else:
                cgr_loss, cgr_acc = head_ce_and_acc(enc.cgr_head, mean_nb[tgt_pos], tokens[:, 0][tgt_pos], hidden)
            cgr_loss, cgr_acc = self._global_mean(cgr_loss, cgr_acc, tgt_pos.sum())
            out.update(cgr_loss=cgr_loss, cgr_acc=cgr_acc, cgr_tokens=tgt_pos.sum().float())
            loss = loss + cgr_loss
        out["loss"] = loss
        out["spots"] = valid.sum().float()
        return out

    def _global_mean(self, loss: torch.Tensor, acc: torch.Tensor, n: torch.Tensor):
        """A rank's token mean reweighted so that the rank mean (what DDP's gradient averaging and the logged
        metrics take) is the mean over every rank's tokens, as one process with the global batch computes it:
        x_r * n_r * W / sum(n). Training only; validation weighs tokens itself."""
        _, world = rank_rows(1)
        if world == 1 or not self.training:
            return loss, acc
        total = all_reduce_sum(n.float())
        w = n.float() * world / total.clamp_min(1)
        return loss * w, acc * w


def _ce_and_acc(logits: torch.Tensor, target: torch.Tensor, anchor: torch.Tensor):
    """Mean cross-entropy (fp32) and accuracy; a zero that keeps the graph when nothing is selected."""
    if target.numel() == 0:
        return anchor.sum() * 0.0, torch.zeros((), device=anchor.device)
    logits = logits.float()
    loss = F.cross_entropy(logits, target)
    # argmax of the fp32 copy (the same values, the same first maximum): CPU argmax over bf16 is 2-3x slower
    acc = (logits.detach().argmax(-1) == target).float().mean()
    return loss, acc


HEAD_CE_CHUNK_ROWS = 128  # rows of logits per chunk: [128 x 20,340] fp32 = 10 MB


def head_ce_and_acc(head: nn.Linear, h: torch.Tensor, target: torch.Tensor, anchor: torch.Tensor):
    """``_ce_and_acc(head(h), target)``, without materialising the [N x vocabulary] logits and their fp32
    copies. The vocabulary head dominates a small encoder's step (the CPU demo's ``tiny``: 20,340-way logits
    at ~2,400 positions a step; profiled, the logits' casts, log-softmax, zero-filled gradient and their
    backward passes took 60 % of the step). Computed chunk by chunk: the logits in the autocast dtype (as
    ``head(h)`` under autocast), their fp32 log-sum-exp, loss, accuracy and the gradient (softmax - one-hot) / N,
    kept in the logits' dtype for the backward matmuls (half the memory of the fp32 log-probabilities the
    unfused path keeps). Same mathematics as the unfused path; the fp32 rounding of the softmax can differ in
    the last bit."""
    if target.numel() == 0:
        return anchor.sum() * 0.0, torch.zeros((), device=anchor.device)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    with torch.autocast(h.device.type, enabled=False):
        loss, correct = _HeadCE.apply(h.to(dtype), head.weight, head.bias, target)
    return loss, correct / target.numel()


class _HeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, target):
        dtype, n = h.dtype, h.shape[0]
        w, b = weight.to(dtype), bias.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.float32, device=h.device)
        grad = torch.empty(n, w.shape[0], dtype=dtype, device=h.device)  # one buffer, no concatenation
        for i in range(0, n, HEAD_CE_CHUNK_ROWS):
            t = target[i:i + HEAD_CE_CHUNK_ROWS, None]
            z = F.linear(h[i:i + HEAD_CE_CHUNK_ROWS], w, b).float()
            m = z.amax(dim=-1, keepdim=True)
            z_t = z.gather(1, t)
            # argmax == target, exactly (the first maximum): amax is several times faster than argmax on CPU,
            # and only rows whose target logit equals the maximum need the first maximum's index
            hit = (z_t == m).squeeze(1)
            if bool(hit.any()):
                rows = hit.nonzero().squeeze(1)
                correct += (z[rows].argmax(-1) == t[rows, 0]).sum()
            e = z.sub_(m).exp_()  # exp(z - max), in place of the chunk's logits
            s = e.sum(dim=-1, keepdim=True)
            loss += (m + s.log() - z_t).sum()
            e.div_(s)  # softmax
            e.scatter_add_(1, t, torch.full_like(z_t, -1.0))
            grad[i:i + HEAD_CE_CHUNK_ROWS] = e.mul_(1.0 / n)
        ctx.save_for_backward(h, w, grad)
        ctx.weight_dtype = weight.dtype
        return loss / n, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        h, w, g = ctx.saved_tensors
        if g.device.type != "cpu" or float(grad_loss) != 1.0:  # the usual 1.0 needs no pass over g
            g = g * grad_loss.to(g.dtype)
        grad_h = g @ w if ctx.needs_input_grad[0] else None
        grad_w = (g.t() @ h).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0).to(ctx.weight_dtype) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None
