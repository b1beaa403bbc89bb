"""Tokenizer and vocabulary. Built from TRAIN captions only, so validation and test words
the model never saw become <unk> exactly as they would for a deployed model."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nltk.tokenize import TreebankWordTokenizer

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_treebank = TreebankWordTokenizer()  # rule-based: needs no downloaded nltk data


@dataclass
class VocabConfig:
    min_freq: int = 2  # words seen fewer times in train captions map to <unk>
    max_size: int = 0  # 0 = no cap; otherwise keep the most frequent words


def tokenize(text: str) -> list[str]:
    """Lowercase, split punctuation off (Treebank rules), drop punctuation-only tokens:
    captions are scored without punctuation, so predicting it would only cost capacity."""
    return [t for t in _treebank.tokenize(text.lower()) if any(c.isalnum() for c in t)]


class Vocab:
    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate words")

    pad_id = property(lambda self: self.stoi[PAD])
    start_id = property(lambda self: self.stoi[START])
    end_id = property(lambda self: self.stoi[END])
    unk_id = property(lambda self: self.stoi[UNK])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """<start> w1 .. wn <end>; with max_len the words are truncated so the whole fits."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(caption)]
        if max_len is not None:
            ids = ids[: max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> "Vocab":
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"not a vocabulary: the first entries must be {SPECIALS}")
        return cls(itos[len(SPECIALS):])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"itos": self.itos}, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls.from_list(json.loads(Path(path).read_text())["itos"])


def build_vocab(train_captions: Iterable[str], cfg: VocabConfig) -> Vocab:
    counts = Counter(t for c in train_captions for t in tokenize(c))
    # Sort by frequency, then alphabetically, so the same captions always give the same ids.
    ranked = sorted((w for w, n in counts.items() if n >= cfg.min_freq), key=lambda w: (-counts[w], w))
    if cfg.max_size:
        ranked = ranked[: max(0, cfg.max_size - len(SPECIALS))]
    if not ranked:
        raise ValueError(f"no word occurs at least vocab.min_freq={cfg.min_freq} times in the train captions")
    return Vocab(ranked)


def unk_rate(vocab: Vocab, captions: Iterable[str]) -> float:
    """Share of caption tokens that map to <unk>."""
    total = unknown = 0
    for caption in captions:
        for token in tokenize(caption):
            total += 1
            unknown += token not in vocab.stoi
    return unknown / total if total else 0.0
