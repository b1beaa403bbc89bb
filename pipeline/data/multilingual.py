"""One model for several caption languages (README: Captions in several languages).

Multilingual translation models start a sentence with a token naming its language; so does a
captioner trained on captions in more than one language. Its vocabulary holds one token per
train language (`<2de>`, kept whole by both vocabulary kinds as a special token) and records
the languages; training puts the caption's language token where `<start>` would be, and
decoding starts from the token of the language asked for, so the decoders need no change.
A model of one language has no language token: its vocabulary, training and figures stay
what they were before languages existed.

The caption metrics' PTB tokenizer is English's. Text is split for scoring (the evaluation
metrics, the validation score, SCST's CIDEr-D reward) in a way that fits its language:
pipeline.data.tokenizers.score_tokens (each language's tokenizer is named in reports/eval_info.json).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import pandas as pd

from pipeline.data.tokenizers import CHARACTER_LANGUAGES, ENGLISH, base_language
from pipeline.data.vocab import Vocab, VocabConfig, language_token
from pipeline.data.vocabularies import build_vocab, from_payload


class LanguageError(ValueError):
    """A language the model cannot caption in (unknown code, or not among its train languages)."""


def ordered_languages(codes: Iterable[str]) -> list[str]:
    """The distinct codes in first-seen order, English first: a model's languages, its default first."""
    return sorted(dict.fromkeys(codes), key=lambda code: code != ENGLISH)


def caption_languages(rows: pd.DataFrame) -> list[list[str]]:
    """The language of each caption of each row (the manifest's `language` column; English for
    tables without it, as manifests from before languages are read)."""
    if "language" not in rows.columns:
        return [[ENGLISH] * len(captions) for captions in rows["captions"]]
    return [list(codes) for codes in rows["language"]]


def captions_in(rows: pd.DataFrame, language: str) -> list[list[str]]:
    """Each row's captions in `language` (an empty list where it has none), in their order."""
    return [[c for c, code in zip(captions, codes) if code == language]
            for captions, codes in zip(rows["captions"], caption_languages(rows))]


def build_caption_vocab(captions: Sequence[str], languages: Sequence[str], cfg: VocabConfig) -> Vocab:
    """The vocabulary of the train captions, `languages[i]` the language of `captions[i]`. With
    two or more languages, each gets its token (added to vocab.special_tokens) and the vocabulary
    records them, English first; with one, it is build_vocab's, unchanged."""
    codes = ordered_languages(languages)
    unspaced = [code for code in codes if base_language(code) in CHARACTER_LANGUAGES]
    if cfg.kind == "word" and unspaced:
        raise ValueError(
            f"the train captions are in {', '.join(codes)}; {', '.join(unspaced)} "
            f"{'is' if len(unspaced) == 1 else 'are'} written without spaces, which the word vocabulary "
            f"(vocab.kind: word) cannot split into words: set vocab.kind: sentencepiece (README: Vocabulary), "
            f"or keep other languages with data.languages")
    if len(codes) < 2:
        return build_vocab(captions, cfg)
    tokens = [token for token in map(language_token, codes) if token not in cfg.special_tokens]
    vocab = build_vocab(captions, replace(cfg, special_tokens=[*cfg.special_tokens, *tokens]))
    return vocab.with_languages(codes)


def model_languages(vocab: Vocab, recorded: Sequence[str] | None = None) -> list[str]:
    """A model's languages, its default first: the vocabulary's when it has several; else the one
    recorded at training (checkpoint extra `languages`); else English (models from before languages)."""
    return list(vocab.languages or recorded or [ENGLISH])


def checkpoint_languages(checkpoint: dict) -> list[str]:
    """model_languages of a checkpoint (pipeline/checkpoint.py), without building the model."""
    return model_languages(from_payload(checkpoint["vocab"]), checkpoint.get("extra", {}).get("languages"))


def resolve_language(code: str | None, available: Sequence[str]) -> str:
    """`code`, checked against the model's languages; None or '' is the model's default (first)."""
    if not code:
        return available[0]
    if code not in available:
        raise LanguageError(f"cannot caption in {code!r}: this model was trained on "
                            f"{', '.join(available)} only; ask for one of them (default {available[0]})")
    return code


def start_id(vocab: Vocab, code: str) -> int:
    """The first decoder input of a caption in `code`: its language token, or <start> in a
    vocabulary of one language."""
    return vocab.language_id(code) if vocab.languages else vocab.start_id


def banned_ids(vocab: Vocab) -> tuple[int, ...]:
    """Tokens a caption must never contain: decoding masks them (no `<unk>`, no language token
    reaches a user)."""
    return (vocab.pad_id, vocab.start_id, vocab.unk_id, *(vocab.language_id(c) for c in vocab.languages))
