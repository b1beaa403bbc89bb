"""The decoder of the seeds (Show and Tell): image feature -> Linear -> BatchNorm as the
first LSTM input, then learned word embeddings, LSTM, dropout, Linear to the vocabulary."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class DecoderConfig:
    embed_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.3


class CaptionDecoder(nn.Module):
    def __init__(self, feature_dim: int, vocab_size: int, cfg: DecoderConfig):
        super().__init__()
        self.feature_dim, self.vocab_size, self.cfg = feature_dim, vocab_size, cfg
        self.image_embed = nn.Linear(feature_dim, cfg.embed_size)
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
        """Feed the image; return the LSTM state ready for the <start> token."""
        _, state = self.lstm(self.embed_image(features).unsqueeze(1))
        return state

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step: tokens (N,) -> log-probabilities (N, V) and the new state."""
        out, state = self.lstm(self.word_embed(tokens).unsqueeze(1), state)
        return torch.log_softmax(self.head(out[:, 0]).float(), dim=-1), state

    def describe(self) -> dict:
        return {"feature_dim": self.feature_dim, "vocab_size": self.vocab_size, **asdict(self.cfg)}
