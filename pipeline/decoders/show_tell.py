"""Show and Tell: pooled image feature -> Linear -> BatchNorm as the first LSTM input, then
learned word embeddings, LSTM, dropout, Linear to the vocabulary. Parameter names are those of
the original CaptionDecoder (before the decoder registry), so its checkpoints load unchanged."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.decoders.base import Decoder, DecoderConfig


class ShowTell(Decoder):
    name = "show_tell"
    spatial = False

    def __init__(self, feature_shape: int | tuple[int, ...], vocab_size: int, cfg: DecoderConfig):
        if isinstance(feature_shape, int):  # the former CaptionDecoder(feature_dim, ...) call
            feature_shape = (feature_shape,)
        super().__init__(feature_shape, vocab_size, cfg)
        self.feature_dim = self.feature_shape[0]
        self.image_embed = nn.Linear(self.feature_dim, cfg.embed_size)
        # Low momentum as in the seed: feature statistics settle slowly over many small batches.
        self.image_bn = nn.BatchNorm1d(cfg.embed_size, momentum=0.01)
        self.word_embed = nn.Embedding(vocab_size, cfg.embed_size, padding_idx=0)
        self.lstm = nn.LSTM(
            cfg.embed_size, cfg.hidden_size, cfg.num_layers, batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, vocab_size)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_bn(self.image_embed(features.float()))

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. captions: (B, T) = <start> w1 .. wn <end> <pad>..; returns logits
        (B, T-1, V) predicting captions[:, 1:]. The image is step 0, whose output is unused
        (as in Show and Tell: the image primes the state, <start> begins the sentence)."""
        # Dropout on words and LSTM outputs, not on the image embedding: the image is the one
        # signal that tells captions apart, and dropping half of it each step blurs attributes.
        image = self.embed_image(features).unsqueeze(1)
        words = self.dropout(self.word_embed(captions[:, :-1]))
        out, _ = self.lstm(torch.cat([image, words], dim=1))
        return self.head(self.dropout(out[:, 1:]))

    # --- incremental decoding, used by greedy and beam search -------------------------
    def start(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the image; return the LSTM state (h, c), each (layers, N, H), ready for <start>."""
        _, state = self.lstm(self.embed_image(features).unsqueeze(1))
        return state

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step: tokens (N,) -> log-probabilities (N, V) and the new state."""
        out, state = self.lstm(self.word_embed(tokens).unsqueeze(1), state)
        return torch.log_softmax(self.head(out[:, 0]).float(), dim=-1), state

    def select(self, state: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor):
        h, c = state
        return h.index_select(1, rows), c.index_select(1, rows)  # batch is dim 1 in nn.LSTM state

    def describe(self) -> dict:
        # feature_dim kept beside feature_shape: readers of older checkpoints look it up.
        return {**super().describe(), "feature_dim": self.feature_dim}
