"""Gene encoder of STAMP (METHOD.md §4) with the released weights' parameter names, plus the Stage-1
pretraining objectives (IGR: masked-gene recovery inside a spot; CGR: a spot's genes from its neighbours).

Parameter names are those of the release (``embeddings``, ``positional_embedding``, ``encoder.layers.N.*`` as
in ``nn.TransformerEncoderLayer``, ``classifier_head``) so that its weights load as they are; ``cgr_head`` is
ours. The layers compute attention with ``F.scaled_dot_product_attention`` (fused kernels) and are tested equal
to ``nn.TransformerEncoder``. The objectives compute vocabulary logits only where a loss reads them: the release
computes the 20,340-way head at every position, which dominates its training cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StampInputError
from ..preprocessing.tokenizer import MASK_ID, MODEL_PAD_ID, STORAGE_PAD_ID, TOKEN_OFFSET

EXTRA_EMBEDDING_ROWS = 5  # the release's embedding has n_tokens + 5 rows
RELEASED_POOL_START = 3  # the release mean-pools positions 3..context-1 (padding included)
REGISTERED_CONFIGS = ("reference", "small", "tiny")  # shipped in stamp_st/configs/gene_encoder/


@dataclass(frozen=True)
class GeneEncoderConfig:
    """Architecture. ``n_tokens`` = vocabulary size + 30 reserved ids = the heads' output size."""

    name: str = "reference"
    vocab_size: int = 20_310
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 16
    d_ff: int = 1024
    context: int = 1500
    layer_norm_eps: float = 1e-12
    cgr_head: bool = True

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise StampInputError(f"gene encoder config {self.name!r}: d_model {self.d_model} is not a multiple "
                                  f"of n_heads {self.n_heads}")
        if min(self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.d_ff, self.context) <= 0:
            raise StampInputError(f"gene encoder config {self.name!r}: sizes must be positive")

    @property
    def n_tokens(self) -> int:
        return self.vocab_size + TOKEN_OFFSET

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, source: str | Path | None = None) -> GeneEncoderConfig:
        from ..config_types import check_config_types

        check_config_types(cls, d, source, "gene encoder setting")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"kind", "n_tokens"}
        if unknown:
            raise StampInputError(f"unknown gene encoder config keys {sorted(unknown)}", source,
                                  hint=f"allowed keys: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, name_or_path: str | Path) -> GeneEncoderConfig:
        """A registered config (``reference``, ``small``, ``tiny``) or a JSON file."""
        from ..configs import load_config_json

        d, source = load_config_json("gene_encoder", name_or_path)
        return cls.from_json(d, source)


class GeneEncoderLayer(nn.Module):
    """Post-norm encoder layer, ReLU, no dropout; the names of ``nn.TransformerEncoderLayer`` so that its
    weights load, attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, bias=True, batch_first=True)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        H = self.n_heads
        qkv = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        q, k, v = qkv.view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        a = self.self_attn.out_proj(a.transpose(1, 2).reshape(B, L, D))
        x = self.norm1(x + a)
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class _Encoder(nn.Module):
    def __init__(self, cfg: GeneEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            GeneEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.layer_norm_eps) for _ in range(cfg.n_layers))


class GeneEncoder(nn.Module):
    """Rank-ordered gene tokens -> per-position hidden states, a spot embedding, and the two heads.

    Inputs are storage ids (0 = padding); inside the model padding becomes id 1 (the embedding's
    ``padding_idx``) and is excluded from attention; id 0 is then the mask token.
    """

    def __init__(self, config: GeneEncoderConfig | str | dict = "reference"):
        super().__init__()
        if isinstance(config, str):
            config = GeneEncoderConfig.load(config)
        elif isinstance(config, dict):
            config = GeneEncoderConfig.from_json(config)
        self.config = cfg = config
        self.embeddings = nn.Embedding(cfg.n_tokens + EXTRA_EMBEDDING_ROWS, cfg.d_model, padding_idx=MODEL_PAD_ID)
        self.positional_embedding = nn.Embedding(cfg.context, cfg.d_model)
        self.encoder = _Encoder(cfg)
        self.classifier_head = nn.Linear(cfg.d_model, cfg.n_tokens)
        self.cgr_head = nn.Linear(cfg.d_model, cfg.n_tokens) if cfg.cgr_head else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """BERT's initialisation for training from scratch: embeddings and linear weights N(0, 0.02), biases
        0, LayerNorm (1, 0). PyTorch's default N(0, 1) embeddings are 50 times larger than every other
        weight, so the sum of gene and position embeddings starts far from the scale the layers expect.
        Loaded weights (a checkpoint, the release) replace all of it."""
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.normal_(m.in_proj_weight, std=std)
                m.in_proj_bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ encoding
    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(tokens, padding_mask)

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states [N, L, d] (L = min(input length, context)).

        ``padding_mask`` (True = padding) is needed only when ``tokens`` already carry mask ids (0), as in
        IGR; otherwise storage padding (0) is detected.
        """
        ctx = self.config.context
        tokens = tokens[:, :ctx]
        pad = (tokens == STORAGE_PAD_ID) if padding_mask is None else padding_mask[:, :ctx].bool()
        ids = tokens.masked_fill(pad, MODEL_PAD_ID)
        L = ids.shape[1]
        x = self.embeddings(ids) + self.positional_embedding.weight[:L]
        attn_mask = None
        if bool(pad.any()):
            keep = ~pad
            keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-padding row attends everywhere, not to NaN
            attn_mask = keep[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, attn_mask)
        return x

    def pool(self, tokens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """Spot embedding [N, d], with gradients (Stage 2 trains through it).

        ``mean``: mean over the non-padding positions (ours). ``released``: the release's quirk, mean over
        positions 3..context-1 with padding included (input padded to the full context), which drops the
        three top-ranked genes; use it only with the released weights.
        """
        ctx = self.config.context
        tokens = tokens[:, :ctx]
        if pooling == "released":
            if tokens.shape[1] < ctx:
                tokens = F.pad(tokens, (0, ctx - tokens.shape[1]), value=STORAGE_PAD_ID)
            return self.encode(tokens)[:, RELEASED_POOL_START:].mean(dim=1)
        if pooling != "mean":
            raise StampInputError(f"unknown pooling {pooling!r}", hint="use 'mean' or 'released'")
        valid = tokens != STORAGE_PAD_ID
        n = max(int(valid.sum(-1).max()), 1) if len(tokens) else 1  # padding past the longest spot: trim
        tokens, valid = tokens[:, :n], valid[:, :n]
        h = self.encode(tokens)
        w = valid.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """``pool`` for inference (no gradients)."""
        return self.pool(tokens, pooling)

    # ------------------------------------------------------------------ released weights
    def load_released_state_dict(self, state_dict: dict, strict: bool = True):
        """Load the release's gene encoder weights: strips ``module.`` / ``spot_backbone.`` prefixes, keeps only
        the encoder's keys of a full ``Stamp`` state dict, ignores the stray ``encoder_layer.*`` template copy
        that ``nn.TransformerEncoder`` keeps. The release has no CGR head: it stays as initialised."""
        sd = {}
        full_model = any(k.removeprefix("module.").startswith("spot_backbone.") for k in state_dict)
        for k, v in state_dict.items():
            k = k.removeprefix("module.")
            if full_model:
                if not k.startswith("spot_backbone."):
                    continue
                k = k.removeprefix("spot_backbone.")
            if k.startswith("encoder_layer."):
                continue
            sd[k] = v
        own = self.state_dict()
        for k, v in sd.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise StampInputError(f"released weight {k} has shape {tuple(v.shape)}, the {self.config.name!r} "
                                      f"config expects {tuple(own[k].shape)}",
                                      hint="load released weights into the 'reference' config")
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("cgr_head.")]
        if strict and (missing or unexpected):
            raise StampInputError(f"released state dict does not match the gene encoder: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return missing, unexpected

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding.weight"}


# ====================================================================== Stage-1 objectives
def mask_tokens(tokens: torch.Tensor, pad: torch.Tensor, n_tokens: int, mask_prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption: select ``mask_prob`` of the non-padding tokens; of those 80 % become the mask id,
    10 % a random gene id, 10 % stay. Returns (corrupted tokens, selected bool mask)."""
    dev = tokens.device
    sel = (torch.rand(tokens.shape, device=dev, generator=generator) < mask_prob) & ~pad
    r = torch.rand(tokens.shape, device=dev, generator=generator)
    rand_ids = torch.randint(TOKEN_OFFSET, n_tokens, tokens.shape, device=dev, generator=generator)
    out = torch.where(sel & (r < 0.8), torch.full_like(tokens, MASK_ID), tokens)
    out = torch.where(sel & (r >= 0.8) & (r < 0.9), rand_ids, out)
    return out, sel


class GenePretrainModel(nn.Module):
    """IGR (+ CGR) on groups of 9 spots: ``forward(batch)`` -> dict with the scalar ``loss`` and metrics.

    ``batch``: ``tokens`` int64 [B, 9, L] storage ids (centre first), ``spot_valid`` bool [B, 9]. Every valid
    spot is encoded once (IGR-corrupted); CGR averages the valid neighbours' last hidden states position by
    position and predicts the centre's (uncorrupted) tokens at its non-padding positions.
    ``logits="full"`` computes the heads at every position first, as the release does (benchmark baseline).
    """

    checkpoint_prefix = "encoder."

    def __init__(self, encoder: GeneEncoder, mask_prob: float = 0.15, cgr: bool = True, logits: str = "gathered",
                 trim: bool = True, phases: list[dict] | None = None):
        super().__init__()
        self.encoder = encoder
        self.mask_prob = mask_prob
        self.cgr = cgr
        self.logits = logits
        self.trim = trim
        self.phases = phases  # e.g. [{"epochs": 1, "cgr": False}, {"epochs": 1, "cgr": True}]
        self.ddp_find_unused_parameters = True  # the CGR head is idle in the IGR-only phase
        if (cgr or any(p.get("cgr") for p in phases or [])) and encoder.cgr_head is None:
            raise StampInputError("CGR needs a gene encoder config with cgr_head: true")

    def on_train_step(self, step: int, epoch: int) -> None:
        """Engine hook: switch CGR on or off by the phase schedule."""
        if self.phases:
            from ..training.schedule import phase_at

            self.cgr = bool(phase_at(self.phases, step, epoch)[1].get("cgr", True))

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.encoder.encoder.layers)

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
        if self.trim:  # padding past the longest spot changes nothing (key-padding mask): drop it
            L = max(int((~pad).sum(-1).max()), 1)
            tokens, pad = tokens[..., :L], pad[..., :L]
        L = tokens.shape[-1]
        flat_tok, flat_pad = tokens[valid], pad[valid]  # [N, L]
        corrupted, sel = mask_tokens(flat_tok, flat_pad, enc.config.n_tokens, self.mask_prob)
        hidden = enc.encode(corrupted, flat_pad)  # [N, L, d]

        out = {}
        head = enc.classifier_head
        if self.logits == "full":
            igr_loss, igr_acc = _ce_and_acc(head(hidden)[sel], flat_tok[sel], hidden)
        else:
            igr_loss, igr_acc = head_ce_and_acc(head, hidden[sel], flat_tok[sel], hidden)
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
            out.update(cgr_loss=cgr_loss, cgr_acc=cgr_acc, cgr_tokens=tgt_pos.sum().float())
            loss = loss + cgr_loss
        out["loss"] = loss
        out["spots"] = valid.sum().float()
        return out


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
