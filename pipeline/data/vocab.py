"""Tokenizer and vocabulary. Built from TRAIN captions only, so validation and test words
the model never saw become <unk> exactly as they would for a deployed model.

One tokenizer serves both the vocabulary and the Java-free metrics (pipeline/evaluation/metrics.py), so the
model is trained on exactly the tokens it is scored on: a pure-Python stand-in for Stanford's
`PTBTokenizer -preserveLines -lowerCase` followed by pycocoevalcap's punctuation filter."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

# Everything the jar or Python's str.splitlines() ends a line at: inside a caption it would
# shift every later caption by one line in the Java tokenizer's one-line-per-caption file.
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# The tokens pycocoevalcap drops after PTB tokenization (its PUNCTUATIONS list; '"' is there
# as the jar's `` and ''). With -lowerCase the bracket tokens come out as -lrb- etc., which
# that list (upper case) misses, so coco keeps them; we do too.
PTB_DROPPED = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_UNBRACKET = {token: bracket for bracket, token in _BRACKETS.items()}
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_CLITIC = re.compile(rf"(?<=\w)({'|'.join(_CLITICS)})\b")
# Tokens PTB keeps with their leading apostrophe (elsewhere a leading ' is a quote mark).
_APOSTROPHE_WORD = re.compile(r"^'(?:t|n'?|em|cause|till?|[1-9]0s)$")
# Colloquial words PTB splits in two when they stand alone: not inside a word or a hyphenated
# word, not before a clitic ("gonna-be", "cannot's" and "wannabe" stay whole).
_TWO_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
              "gimme": "gim me", "lemme": "lem me"}
_TWO_WORD = re.compile(rf"(?<![^\W_])({'|'.join(_TWO_WORDS)})(?![^\W_]|-[^\W_]|'(?:s|re|ve|ll|d|m)\b)")
_TIS = re.compile(r"'t(?=(?:is|was)\b)")  # 'tis, 'twas -> 't is, 't was
# more'n -> more 'n, fish'n'chips -> fish 'n' chips; PTB only splits after a lower-case letter,
# and '&' unless between capitals (AT&T, R&D stay whole), so both run before lower-casing.
_N_APOSTROPHE = re.compile(r"(?<=[a-z])('[nN]'(?=[a-zA-Z])|'[nN](?=\s|$))")
_AMPERSAND = re.compile(r"(?<![A-Z])&|&(?![A-Z])")
# Punctuation PTB always splits off a word (":" and "," only when not inside a number).
_SPLIT_PUNCT = re.compile(r"(\.\.\.|--|[;!?\"`%$*=~^|\\]|(?<!\d)[:,]|[:,](?!\d))")
# u.s.a., a.m., etc. keep their periods in PTB
_ABBREVIATION = re.compile(r"^(?:(?:[a-z]\.){2,}|(?:etc|mr|mrs|ms|dr|st|vs|jr|inc|co|ltd)\.)$")


def one_line(text: str) -> str:
    """`text` with every line break and line/record separator turned into a space."""
    return _LINE_BREAK.sub(" ", text)


def ptb_tokens(sentence: str) -> list[str]:
    """PTB tokens of `sentence` as the caption metrics see them: lower-cased, clitics and
    colloquial contractions split (dog 's, is n't, can not, gon na, 't is, more 'n), brackets
    as -lrb- etc., % $ & kept, punctuation in PTB_DROPPED removed. Exact against the jar on
    ordinary captions and the contractions above; an approximation on exotic text."""
    text = _AMPERSAND.sub(" & ", _N_APOSTROPHE.sub(r" \1 ", one_line(sentence))).lower()
    text = _TIS.sub(" 't ", _CLITIC.sub(r" \1", _TWO_WORD.sub(lambda m: _TWO_WORDS[m.group(1)], text)))
    for bracket, token in _BRACKETS.items():
        text = text.replace(bracket, f" {token} ")
    text = _SPLIT_PUNCT.sub(r" \1 ", text)
    tokens = []
    for token in text.split():
        if token not in _CLITICS and not _APOSTROPHE_WORD.match(token):
            token = token.strip("'")  # quote marks around a word
        if token.endswith(".") and not _ABBREVIATION.match(token) and token.strip("."):
            token = token.rstrip(".")  # sentence-final period
        if token and token not in PTB_DROPPED and token.strip(".-"):
            tokens.append(token)
    return tokens


@dataclass
class VocabConfig:
    min_freq: int = 2  # words seen fewer times in train captions map to <unk>
    max_size: int = 0  # 0 = no cap; otherwise keep the most frequent words


def tokenize(text: str) -> list[str]:
    """The metrics' tokens (ptb_tokens): the model learns exactly what it is scored on, and
    no punctuation the metrics drop, which would only cost capacity."""
    return ptb_tokens(text)


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
            words.append(_UNBRACKET.get(self.itos[i], self.itos[i]))  # readable; the metrics re-tokenize "("
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
