"""Word boundaries for Japanese, so that no subword piece spans two words.

Sentencepiece learns its pieces inside whitespace-separated runs. A Japanese caption is one run,
so frequent phrases become single pieces: on the default scenes in five languages, BPE with 1000
pieces made "赤いひし形" (red diamond) and "オレンジ色の三角" (orange triangle) one piece each,
and the model named a held-out colour-shape pair (a red triangle, never in training) by the
piece of a seen pair: Japanese object precision 0.57 on the novel split against 0.96 for
English (README: Captions in several languages). Splitting Japanese captions into words before
the pieces are learned and spelled (janome: a pure-Python morphological analyser whose
dictionary ships in its wheel) keeps colours and shapes apart; decoding removes the spaces again.

A caption is taken as Japanese when it has kana (hiragana, katakana): the vocabulary sees
captions without their language. Chinese (no kana) is not split here (a Chinese word splitter
is the route to the same effect)."""
from __future__ import annotations

import functools
import re

# Hiragana, katakana (and their phonetic extensions, half-width forms).
_KANA = re.compile(r"[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
# Characters written without spaces around them: kana, CJK ideographs, CJK and full-width punctuation.
_UNSPACED = "\u3000-\u303f\u3041-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff9f"
_SPACE_BY_UNSPACED = re.compile(rf"(?<=[{_UNSPACED}]) +| +(?=[{_UNSPACED}])")


class SegmenterMissing(RuntimeError):
    """Japanese captions need janome to be split into words."""


@functools.lru_cache(maxsize=1)
def _janome():
    try:
        from janome.tokenizer import Tokenizer
    except ImportError:
        raise SegmenterMissing(
            "the captions include Japanese, which vocab.japanese_words splits into words with janome: "
            "install it (pip install janome) or set vocab.japanese_words: false") from None
    return Tokenizer(wakati=True)


def is_japanese(text: str) -> bool:
    return _KANA.search(text) is not None


@functools.lru_cache(maxsize=262_144)  # a stage spells each train caption more than once
def split_words(text: str) -> str:
    """Japanese text with a space between words ("小さい 青い 四角 が 上"); other text, and the
    space-separated runs without kana (a language token such as <2ja>), unchanged."""
    if not is_japanese(text):
        return text
    runs = text.split(" ")
    return " ".join(" ".join(w for w in _janome().tokenize(run) if w.strip()) if is_japanese(run) else run
                    for run in runs)


def join_words(text: str) -> str:
    """Undo split_words: no space next to a character written without spaces. Text without such
    characters is unchanged."""
    return _SPACE_BY_UNSPACED.sub("", text)
