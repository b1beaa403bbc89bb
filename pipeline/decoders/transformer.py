"""A small pre-LN Transformer decoder over the h*w spatial tokens of a feature map.

Tokens get learned position embeddings; the projected, normalised feature map gets learned
row + column embeddings, so "left of" / "above" are visible to cross-attention. Incremental
decoding keeps a key/value cache: cross-attention keys/values are computed once in start(),
each step writes the new token's self-attention keys/values into preallocated buffers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.decoders.base import Decoder, DecoderConfig, Dropout, take_rows

MAX_POSITIONS = 64  # caption tokens incl. <start>; train.max_len is 22 by default
CACHE_START = 16  # key/value positions allocated at the start of decoding (most captions are shorter)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Scaled dot-product attention. On a CPU, two matmuls and a softmax: in training (~13
    queries against 13 or 49 keys) forward + backward take about half the time of SDPA's CPU
    flash kernel (bench/bench_train_step.py). In decoding (one query a row) they win against the
    49 memory keys and lose against a short cache (bench/bench_decode.py): one kernel for both,
    no faster or slower end to end. On a GPU, SDPA: its fused kernels win there."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        future = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(n_k - n_q + 1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1) @ v


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.dropout = Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, heads, T, d/heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    @staticmethod
    def merge(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).flatten(2)

    def cross_keys(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.key_value(memory).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x, cross_k, cross_v, cache: tuple[torch.Tensor, torch.Tensor] | None = None, length: int = 0):
        """x (N, T, d). Without a cache: causal over x. With one (key and value buffers
        (N, heads, capacity, d/heads) holding `length` positions): x holds the new token(s) only;
        their keys/values are written into the buffers in place and they see every cached position."""
        q, k, v = (self.split(t) for t in self.qkv(self.norm_self(x)).chunk(3, dim=-1))
        if cache is not None:
            end = length + x.shape[1]
            cache[0][:, :, length:end], cache[1][:, :, length:end] = k, v
            k, v = cache[0][:, :, :end], cache[1][:, :, :end]
        a = attend(q, k, v, causal=cache is None)
        x = x + self.dropout(self.self_out(self.merge(a)))
        a = attend(self.split(self.query(self.norm_cross(x))), cross_k, cross_v, causal=False)
        x = x + self.dropout(self.cross_out(self.merge(a)))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class TransformerDecoder(Decoder):
    name = "transformer"
    spatial = True

    def __init__(self, feature_shape: tuple[int, ...], vocab_size: int, cfg: DecoderConfig):
        super().__init__(feature_shape, vocab_size, cfg)
        width = cfg.hidden_size
        if cfg.heads < 1 or width % cfg.heads:
            raise ValueError(f"train.hidden_size ({width}) must be a multiple of train.heads ({cfg.heads})")
        if cfg.num_layers < 1:
            raise ValueError(f"train.num_layers must be at least 1 for the transformer, got {cfg.num_layers}")
        channels, rows, cols = self.feature_shape
        # Block outputs of a CNN are unbounded per channel: project, then LayerNorm.
        self.feat_proj = nn.Linear(channels, width)
        self.feat_norm = nn.LayerNorm(width)
        self.row_embed = nn.Parameter(torch.zeros(rows, width))
        self.col_embed = nn.Parameter(torch.zeros(cols, width))
        self.word_embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos_embed = nn.Embedding(MAX_POSITIONS, width)
        self.blocks = nn.ModuleList(Block(width, cfg.heads, cfg.dropout) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(width)
        self.dropout = Dropout(cfg.dropout)
        self.head = nn.Linear(width, vocab_size)  # untied: the vocabulary is small, tying saves little
        self.apply(self._init)
        for p in (self.row_embed, self.col_embed):
            nn.init.normal_(p, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # GPT-style N(0, 0.02): torch's default N(0, 1) embeddings would dwarf the residual
        # branches (attention, feed-forward) at the start of training.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def encode(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = self.check_features(features).flatten(2).transpose(1, 2)  # (N, h*w, C), row-major
        where = (self.row_embed.unsqueeze(1) + self.col_embed.unsqueeze(0)).flatten(0, 1)
        memory = self.feat_norm(self.feat_proj(x)) + where
        return [block.cross_keys(memory) for block in self.blocks]

    def embed(self, tokens: torch.Tensor, offset: int) -> torch.Tensor:
        length = tokens.shape[1]
        if offset + length > MAX_POSITIONS:
            raise ValueError(f"the transformer decoder has {MAX_POSITIONS} positions, asked for "
                             f"{offset + length}: lower train.max_len / the decoding max_len")
        positions = torch.arange(offset, offset + length, device=tokens.device)
        return self.dropout(self.word_embed(tokens) + self.pos_embed(positions))

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T-1, V) predicting captions[:, 1:]."""
        return self._teacher_forced(self.encode(features), captions)

    def forward_rows(self, features: torch.Tensor, captions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # The memory side (projection + cross keys/values of 49 tokens) is ~40% of a pass: once per image.
        cross = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.encode(features)]
        return self._teacher_forced(cross, captions)

    def _teacher_forced(self, cross: list, captions: torch.Tensor) -> torch.Tensor:
        x = self.embed(captions[:, :-1], 0)
        for block, (k, v) in zip(self.blocks, cross):
            x = block(x, k, v)
        return self.head(self.final_norm(x))

    # --- incremental decoding with a key/value cache --------------------------------------
    # Self-attention keys/values go into preallocated buffers that double when full: appending
    # with torch.cat copied the whole cache every step (13% of SCST's sampling, 2-core profile).
    # step() writes into the state's buffers in place, so a state is consumed by the step that
    # takes it (select() copies rows into new buffers: branch with it).
    def start(self, features: torch.Tensor) -> dict:
        cross = self.encode(features)
        n, device = features.shape[0], cross[0][0].device
        buffers = [k.new_empty(n, k.shape[1], CACHE_START, k.shape[3]) for k, _ in cross for _ in range(2)]
        return {"cross_k": [k for k, _ in cross], "cross_v": [v for _, v in cross],
                "self_k": buffers[0::2], "self_v": buffers[1::2], "length": 0, "src": torch.arange(n, device=device)}

    def step(self, tokens: torch.Tensor, state: dict):
        length = state["length"]  # tokens already fed
        x = self.embed(tokens.unsqueeze(1), length)
        self_k, self_v = state["self_k"], state["self_v"]
        if length == self_k[0].shape[2]:  # full: double the buffers
            self_k, self_v = ([torch.cat([b, torch.empty_like(b)], dim=2) for b in bufs] for bufs in (self_k, self_v))
        for i, block in enumerate(self.blocks):
            x = block(x, state["cross_k"][i], state["cross_v"][i], (self_k[i], self_v[i]), length)
        logp = torch.log_softmax(self.head(self.final_norm(x[:, 0])).float(), dim=-1)
        return logp, {**state, "self_k": self_k, "self_v": self_v, "length": length + 1}

    def select(self, state: dict, rows: torch.Tensor) -> dict:
        return take_rows(state, rows, per_image=("cross_k", "cross_v"))
