"""Every vocabulary kind (vocab.kind): build one from the train captions, load one from a
vocab file or a checkpoint. pipeline.data.vocab holds the interface and the word kind,
pipeline.data.subword the sentencepiece kind; this module is the only one that knows both."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pipeline.data.subword import SubwordVocab, train_sentencepiece
from pipeline.data.vocab import KINDS, Vocab, VocabConfig, build_word_vocab


def load_vocab(path: str | Path) -> Vocab:
    """Either kind, as its save() wrote it."""
    return from_payload(json.loads(Path(path).read_text()))


def from_payload(payload: list | dict) -> Vocab:
    """The vocabulary of a checkpoint's `vocab` (Vocab.payload) or of a saved vocab file."""
    languages = (payload.get("languages") or []) if isinstance(payload, dict) else []
    if isinstance(payload, dict) and "itos" in payload:  # the word kind's file (and multilingual payload)
        payload = payload["itos"]
    if isinstance(payload, list):  # the word kind, and every checkpoint from before the kinds
        vocab = Vocab.from_list(payload)
        return vocab.with_languages(languages) if languages else vocab
    if isinstance(payload, dict) and payload.get("kind") == "sentencepiece":
        vocab = SubwordVocab.from_payload(payload)
        return vocab.with_languages(languages) if languages else vocab
    kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
    raise ValueError(f"not a vocabulary of a known kind ({kind!r}; known: {', '.join(KINDS)}): "
                     "rebuild it with `dvc repro vocab`")


def build_vocab(train_captions: Iterable[str], cfg: VocabConfig) -> Vocab:
    """The vocabulary of kind cfg.kind, from the TRAIN captions only."""
    if cfg.kind == "sentencepiece":
        return train_sentencepiece(train_captions, cfg)
    return build_word_vocab(train_captions, cfg)
