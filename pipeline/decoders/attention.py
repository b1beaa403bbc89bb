"""Show, Attend and Tell (soft attention) over a spatial feature map (N, C, h, w).

Each step attends over the h*w locations with additive attention driven by the previous hidden
state, gates the context with f_beta = sigmoid(Linear(h)), and feeds [word embedding, gated
context] to an LSTM cell. Written for a 2-core CPU: everything that does not depend on the step
runs once per forward (the encoder projection, the attention keys, the word part of the LSTM
input gates), and the three products of h_{t-1} (LSTM recurrence, attention query, f_beta) are
one matrix multiply, so a step is a handful of tensor ops."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.decoders.base import Decoder, DecoderConfig, take_rows


class SoftAttention(Decoder):
    name = "attention"
    spatial = True

    def __init__(self, feature_shape: tuple[int, ...], vocab_size: int, cfg: DecoderConfig):
        super().__init__(feature_shape, vocab_size, cfg)
        channels = self.feature_shape[0]
        width, hidden, att = cfg.hidden_size, cfg.hidden_size, cfg.attention_dim
        self.hidden, self.width, self.att = hidden, width, att
        # CNN block outputs are not ReLU-bounded and differ in scale per channel: project to a
        # working width and LayerNorm so attention scores and the gated context stay well scaled.
        self.feat_proj = nn.Linear(channels, width)
        self.feat_norm = nn.LayerNorm(width)
        self.enc_att = nn.Linear(width, att)
        # Score vector of the additive attention (no bias: it would cancel in the softmax).
        self.att_score = nn.Parameter(torch.empty(att).uniform_(-att ** -0.5, att ** -0.5))
        self.init_state = nn.Linear(width, 2 * hidden)  # h0, c0 from the mean location
        self.word_embed = nn.Embedding(vocab_size, cfg.embed_size, padding_idx=0)
        self.word_gates = nn.Linear(cfg.embed_size, 4 * hidden)
        self.ctx_gates = nn.Linear(width, 4 * hidden, bias=False)  # word_gates carries the bias
        # h_{t-1} -> [LSTM recurrence (4H) | attention query (A) | f_beta gate (E)]
        self.from_h = nn.Linear(hidden, 4 * hidden + att + width)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(hidden, vocab_size)
        self._aux: torch.Tensor | None = None

    def encode(self, features: torch.Tensor):
        x = self.check_features(features).flatten(2).transpose(1, 2)  # (N, h*w, C)
        memory = self.feat_norm(self.feat_proj(x))
        keys = self.enc_att(memory)
        h, c = self.init_state(memory.mean(dim=1)).chunk(2, dim=-1)
        return memory, keys, h, c

    def advance(self, word_gates, h, c, memory, keys):
        """One LSTM step on precomputed word gates; returns (h, c, alpha over locations)."""
        hidden, att = self.hidden, self.att
        # split/chunk rather than slicing: their backward is one cat, not a zero fill per slice.
        rec, query, beta = self.from_h(h).split([4 * hidden, att, self.width], dim=-1)
        # Additive attention v . squash(keys + query). The (N, L, A) tensor is the costliest part
        # of a step, and on CPU torch's tanh is ~6x slower than sigmoid. tanh(z) = 2 sigmoid(2z) - 1,
        # and the factors fold into the learned weights and the constant cancels in the softmax:
        # sigmoid gives the same family of attention functions. In place (backward only needs
        # the output) and a matrix-vector product save a pass over the tensor each.
        scores = (keys + query.unsqueeze(1)).sigmoid_() @ self.att_score  # (N, L)
        alpha = torch.softmax(scores, dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), memory).squeeze(1) * torch.sigmoid(beta)
        gates = word_gates + rec + self.ctx_gates(context)
        ifo, g = gates.split([3 * hidden, hidden], dim=-1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
        c = f * c + i * torch.tanh(g)
        return o * torch.tanh(c), c, alpha

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T-1, V) predicting captions[:, 1:]; keeps the doubly
        stochastic penalty of this batch for aux_loss()."""
        return self._teacher_forced(self.encode(features), captions)

    def forward_rows(self, features: torch.Tensor, captions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # Projection, attention keys and h0/c0 once per image, then one copy per caption.
        return self._teacher_forced([t.index_select(0, rows) for t in self.encode(features)], captions)

    def _teacher_forced(self, encoded, captions: torch.Tensor) -> torch.Tensor:
        memory, keys, h, c = encoded
        word_gates = self.word_gates(self.word_embed(captions[:, :-1]))  # all steps in one matmul
        hs, alphas = [], []
        for step_gates in word_gates.unbind(1):  # unbind: one stack in backward, not a fill per step
            h, c, alpha = self.advance(step_gates, h, c, memory, keys)
            hs.append(h)
            alphas.append(alpha)
        # Padding steps are not part of any caption: they must not count as attention given.
        valid = (captions[:, 1:] != 0).to(memory.dtype)
        attended = torch.einsum("btl,bt->bl", torch.stack(alphas, dim=1), valid)
        self._aux = self.cfg.alpha_c * ((1.0 - attended) ** 2).mean()
        return self.head(self.dropout(torch.stack(hs, dim=1)))

    def aux_loss(self) -> torch.Tensor:
        return super().aux_loss() if self._aux is None else self._aux

    # --- incremental decoding -------------------------------------------------------------
    def start(self, features: torch.Tensor) -> dict:
        memory, keys, h, c = self.encode(features)
        src = torch.arange(features.shape[0], device=memory.device)
        return {"h": h, "c": c, "memory": memory, "keys": keys, "src": src}

    def step(self, tokens: torch.Tensor, state: dict):
        word_gates = self.word_gates(self.word_embed(tokens))
        h, c, _ = self.advance(word_gates, state["h"], state["c"], state["memory"], state["keys"])
        # Same dropout as forward: step() and forward() compute the same function in either mode.
        logp = torch.log_softmax(self.head(self.dropout(h)).float(), dim=-1)
        return logp, {**state, "h": h, "c": c}

    def select(self, state: dict, rows: torch.Tensor) -> dict:
        return take_rows(state, rows, per_image=("memory", "keys"))
