"""Gene encoder of STAMP (METHOD.md §4) with the released weights' parameter names. It returns hidden states
and pooled features; the Stage-1 objectives (IGR, CGR) are a training task: ``training.gene_objectives``.

Parameter names are those of the release (``embeddings``, ``positional_embedding``, ``encoder.layers.N.*`` as
in ``nn.TransformerEncoderLayer``, ``classifier_head``) so that its weights load as they are; ``cgr_head`` is
ours. The layers compute attention with ``F.scaled_dot_product_attention`` (fused kernels) and are tested equal
to ``nn.TransformerEncoder``. The objectives compute vocabulary logits only where a loss reads them: the release
computes the 20,340-way head at every position, which dominates its training cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config_types import CONTEXT, check_ranges, ranged
from ..errors import StampInputError
from ..preprocessing.tokenizer import MODEL_PAD_ID, STORAGE_PAD_ID, TOKEN_OFFSET

EXTRA_EMBEDDING_ROWS = 5  # the release's embedding has n_tokens + 5 rows
RELEASED_POOL_START = 3  # the release mean-pools positions 3..context-1 (padding included)
REGISTERED_CONFIGS = ("reference", "small", "tiny")  # shipped in stamp_st/configs/gene_encoder/


@dataclass(frozen=True)
class GeneEncoderConfig:
    """Architecture. ``n_tokens`` = vocabulary size + 30 reserved ids = the heads' output size."""

    name: str = "reference"
    vocab_size: int = ranged(20_310, lo=1, hi=10_000_000, integer=True, why="genes in the vocabulary")
    d_model: int = ranged(512, lo=1, hi=65_536, integer=True, why="hidden size; the reference model uses 512")
    n_layers: int = ranged(12, lo=1, hi=1024, integer=True)
    n_heads: int = ranged(16, lo=1, hi=1024, integer=True)
    d_ff: int = ranged(1024, lo=1, hi=262_144, integer=True)
    context: int = ranged(1500, CONTEXT)
    layer_norm_eps: float = ranged(1e-12, lo=0, hi=1, lo_open=True)
    cgr_head: bool = True

    def __post_init__(self):
        check_ranges(self, f"gene encoder config {self.name!r}", "gene encoder setting")
        if self.d_model % self.n_heads:
            raise StampInputError(f"gene encoder config {self.name!r}: d_model {self.d_model} is not a multiple "
                                  f"of n_heads {self.n_heads}")
        if min(self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.d_ff, self.context) <= 0:
            raise StampInputError(f"gene encoder config {self.name!r}: sizes must be positive")

    @property
    def n_tokens(self) -> int:
        return self.vocab_size + TOKEN_OFFSET

    def n_parameters(self) -> int:
        """Parameters of the encoder and its heads (embeddings, positions, layers, the vocabulary heads)."""
        d = self.d_model
        layer = 4 * d * d + 4 * d + 2 * d * self.d_ff + self.d_ff + d + 4 * d
        heads = (2 if self.cgr_head else 1) * (d * self.n_tokens + self.n_tokens)
        return (self.n_tokens + EXTRA_EMBEDDING_ROWS) * d + self.context * d + self.n_layers * layer + heads

    def training_bytes(self, batch_rows: int) -> float:
        """A lower bound of the training memory (to refuse sizes that cannot fit, never ones that might): fp32
        weights, gradients and two Adam moments, plus each layer's input and output for ``batch_rows``
        sequences in bf16 (the backward pass keeps more than that)."""
        acts = batch_rows * self.context * self.n_layers * 2 * self.d_model * 2
        return 16.0 * self.n_parameters() + acts

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, source: str | Path | None = None) -> GeneEncoderConfig:
        from ..config_types import config_from_dict

        return config_from_dict(cls, d, source, "gene encoder setting", ignore=("kind", "n_tokens"))

    @classmethod
    def load(cls, name_or_path: str | Path) -> GeneEncoderConfig:
        """A registered config (``reference``, ``small``, ``tiny``) or a JSON file."""
        from ..configs import load_config_json

        d, source = load_config_json("gene_encoder", name_or_path)
        return cls.from_json(d, source)


def length_groups(sorted_need, max_groups: int, linear_cost: float, attention_cost: float,
                  min_saving: float = 0.1) -> list[tuple[int, int]]:
    """Cut rows sorted by length into at most ``max_groups`` contiguous groups, each computed at its longest
    length, so that the layers' cost, sum over groups of n * (linear_cost * L + attention_cost * L^2), is
    least (dynamic programming over the distinct lengths); one group where the best cut saves under
    ``min_saving`` of one group's cost (e.g. every spot full length: splitting only adds launches)."""
    import numpy as np

    need = np.asarray(sorted_need, dtype=np.float64)
    n = len(need)
    if n == 0:
        return []
    vals, ends = np.unique(need, return_index=False, return_counts=True)
    ends = np.cumsum(ends)  # rows up to and including each distinct length
    starts = np.concatenate([[0], ends[:-1]])
    per_row = linear_cost * vals + attention_cost * vals**2  # cost of a row computed at each length
    u = len(vals)
    # seg[i, j]: rows of distinct lengths i..j computed at vals[j]
    seg = np.where(np.arange(u)[:, None] <= np.arange(u)[None, :],
                   (ends[None, :] - starts[:, None]) * per_row[None, :], np.inf)
    dp, args = [seg[0]], [None]  # dp[g-1][j]: least cost of lengths 0..j in g groups
    for _ in range(1, min(max_groups, u)):
        prev = np.concatenate([[np.inf], dp[-1][:-1]])  # groups before one that starts at distinct length i
        total = prev[:, None] + seg  # [start i, end j]
        arg = total.argmin(axis=0)
        dp.append(total[arg, np.arange(u)])
        args.append(arg)
    g = int(np.argmin([d[-1] for d in dp]))
    if dp[g][-1] > (1.0 - min_saving) * n * per_row[-1]:
        return [(0, n)]
    bounds, j = [], u - 1
    for level in range(g, 0, -1):
        i = int(args[level][j])
        bounds.append((int(starts[i]), int(ends[j])))
        j = i - 1
    bounds.append((0, int(ends[j])))
    return bounds[::-1]


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
        tokens, pad = self._inputs(tokens, padding_mask)
        x, attn_mask = self._embed(tokens, pad)
        for layer in self.encoder.layers:
            x = layer(x, attn_mask)
        return x

    def hidden_states(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's states, as ``encode`` computes them: [embedded input, layer 1, ..., last layer], each
        [N, L, d] (what Hugging Face models return as ``hidden_states``; for probing layers)."""
        tokens, pad = self._inputs(tokens, padding_mask)
        x, attn_mask = self._embed(tokens, pad)
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x, attn_mask)
            states.append(x)
        return states

    def _inputs(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None):
        ctx = self.config.context
        tokens = tokens[:, :ctx]
        pad = (tokens == STORAGE_PAD_ID) if padding_mask is None else padding_mask[:, :ctx].bool()
        return tokens, pad

    def _embed(self, tokens: torch.Tensor, pad: torch.Tensor):
        """(embedded input [N, L, d], key-padding attention mask or None)."""
        ids = tokens.masked_fill(pad, MODEL_PAD_ID)
        L = ids.shape[1]
        x = self.embeddings(ids) + self.positional_embedding.weight[:L]
        attn_mask = None
        if bool(pad.any()):
            keep = ~pad
            keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-padding row attends everywhere, not to NaN
            attn_mask = keep[:, None, None, :]
        return x, attn_mask

    def encode_bucketed(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None,
                        need: torch.Tensor | None = None, buckets: int = 4, multiple: int = 8) -> torch.Tensor:
        """``encode``, with each row computed only up to ``need[i]`` positions (default: its own length):
        rows sorted by need (rounded up to ``multiple``, for tensor cores) and cut into at most ``buckets``
        groups by :func:`length_groups`, each group encoded trimmed to its largest need, layer by layer across
        the groups (one FSDP all-gather per layer). Returns [N, L, d] in the input order; positions at or past
        a row's need (rounded) may hold zeros. Exact: a padding key is masked, so a position's output does not
        depend on how much padding follows (rows need a non-padding token; all-padding rows attend otherwise).
        """
        tokens, pad = self._inputs(tokens, padding_mask)
        N, L = tokens.shape
        if buckets <= 1 or N <= 1:
            return self.encode(tokens, pad)
        need = (~pad).sum(1) if need is None else need.to(tokens.device)
        need = ((need.clamp(1, L) + multiple - 1) // multiple * multiple).clamp_max(L)
        order = torch.argsort(need, stable=True)
        sorted_need = need[order].cpu().numpy()
        cfg = self.config
        bounds = length_groups(sorted_need, buckets, 2.0 * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_ff),
                               4.0 * cfg.d_model)
        groups = [order[a:b] for a, b in bounds]
        lens = [int(sorted_need[b - 1]) for a, b in bounds]
        xs, masks = zip(*(self._embed(tokens[idx, :n], pad[idx, :n]) for idx, n in zip(groups, lens)))
        xs = list(xs)
        for layer in self.encoder.layers:
            xs = [layer(x, m) for x, m in zip(xs, masks)]
        out = torch.cat([F.pad(x, (0, 0, 0, L - n)) for x, n in zip(xs, lens)])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(N, device=order.device)
        return out[inverse]

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

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding.weight"}
