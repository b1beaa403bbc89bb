"""Tokenizer and vocabularies. Built from TRAIN captions only, so validation and test words
the model never saw become <unk> (word kind) or pieces of words it saw (sentencepiece kind,
pipeline/data/subword.py) exactly as they would for a deployed model.

One tokenizer serves both the vocabulary and the Java-free metrics (pipeline/evaluation/metrics.py), so the
model is trained on exactly the tokens it is scored on: a pure-Python stand-in for Stanford's
`PTBTokenizer -preserveLines -lowerCase` followed by pycocoevalcap's punctuation filter."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable, Iterable

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


def language_token(code: str) -> str:
    """The token that starts a caption in language `code` in a multilingual model (<2de>), as
    in multilingual translation models (pipeline/data/multilingual.py)."""
    return f"<2{code}>"

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


KINDS = ("word", "sentencepiece")
MODEL_TYPES = ("unigram", "bpe")


@dataclass
class VocabConfig:
    kind: str = "word"  # word | sentencepiece (pipeline/data/subword.py)
    # word kind
    min_freq: int = 2  # words seen fewer times in train captions map to <unk>
    max_size: int = 0  # 0 = no cap; otherwise keep the most frequent words
    # sentencepiece kind
    model_type: str = "unigram"  # unigram | bpe
    # Pieces, the 4 specials included. Sentencepiece refuses more pieces than the train captions
    # can form (on the default scenes: 92 unigram, 427 bpe) and fewer than their characters + 4.
    size: int = 80
    character_coverage: float = 1.0  # share of the train characters given a piece (ja/zh: 0.9995)
    byte_fallback: bool = False  # spell unseen characters as UTF-8 bytes (256 more pieces): no <unk> at all
    # Pieces of the captions as written (case, punctuation: German nouns, "l'étoile", commas)
    # instead of the metrics' lower-cased words; the metrics still compare lower-cased words.
    verbatim: bool = False
    # Split Japanese captions into words (janome) before pieces are learned, so no piece spans a
    # colour and a shape (pipeline/data/segmentation.py).
    japanese_words: bool = True
    # Tokens kept whole by both kinds, always in the vocabulary (language tokens such as <2de>).
    special_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"vocab.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"vocab.model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}")
        if self.min_freq < 1 or self.max_size < 0:
            raise ValueError(f"vocab.min_freq must be >= 1 and vocab.max_size >= 0, got {self.min_freq} and {self.max_size}")
        if self.kind == "sentencepiece" and self.size <= len(SPECIALS) + len(self.special_tokens):
            raise ValueError(f"vocab.size ({self.size}) must leave room for pieces beyond the "
                             f"{len(SPECIALS) + len(self.special_tokens)} special tokens")
        if self.verbatim and self.kind != "sentencepiece":
            raise ValueError("vocab.verbatim keeps the captions' case and punctuation in sentencepiece pieces: "
                             "it needs vocab.kind: sentencepiece (the word kind holds the metrics' words)")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"vocab.character_coverage must be in (0, 1], got {self.character_coverage}")
        for token in self.special_tokens:
            # Captions reach the vocabulary through tokenize(): a token it would change never matches.
            if token in SPECIALS or tokenize(token) != [token]:
                raise ValueError(f"vocab.special_tokens: {token!r} must be one lower-case token without spaces or "
                                 f"the punctuation the metrics drop (the tokenizer reads {tokenize(token)}), "
                                 f"and none of {', '.join(SPECIALS)}")
        if len(set(self.special_tokens)) < len(self.special_tokens):
            raise ValueError(f"vocab.special_tokens has duplicates: {self.special_tokens}")


def tokenize(text: str) -> list[str]:
    """The metrics' tokens (ptb_tokens): the model learns exactly what it is scored on, and
    no punctuation the metrics drop, which would only cost capacity."""
    return ptb_tokens(text)


def readable(token: str) -> str:
    """A token as text shows it: -lrb- -> "(" (the metrics re-tokenize "(" to -lrb-)."""
    return _UNBRACKET.get(token, token)


def normalise(caption: str) -> str:
    """The caption as every vocabulary kind gives it back: its tokens joined by spaces, brackets
    readable. The metrics tokenize it exactly as they tokenize the caption itself."""
    return " ".join(map(readable, tokenize(caption)))


class Vocab:
    """The word vocabulary, and the interface of every kind (pipeline.data.subword.SubwordVocab
    is the other): ids 0-3 are <pad> <start> <end> <unk>, encode/decode, payload/save/load, and
    the words SCST's CIDEr-D reward compares. Training, decoding, evaluation and the Captioner
    use only this interface, so they do not depend on the kind."""
    kind = "word"

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate words")
        # The caption languages of a multilingual vocabulary, each with its language token (the
        # first is the default); empty for one language, whose vocabulary has no such token.
        self.languages: list[str] = []

    def with_languages(self, codes: Iterable[str]) -> "Vocab":
        """This vocabulary, recording `codes` as its languages (each must have its token)."""
        codes = list(codes)
        missing = [c for c in codes if language_token(c) not in self.stoi]
        if missing or len(set(codes)) < len(codes) or len(codes) == 1:
            raise ValueError(f"a multilingual vocabulary needs 2 or more distinct languages, each with its "
                             f"token: got {codes}, tokens missing for {missing}; rebuild it with `dvc repro vocab`")
        self.languages = codes
        return self

    def language_id(self, code: str) -> int:
        """The id of the token that starts a caption in `code`."""
        if code not in self.languages:
            raise ValueError(f"the vocabulary has no token for language {code!r}; its languages: "
                             f"{', '.join(self.languages) or 'one, without a token'}")
        return self.stoi[language_token(code)]

    pad_id = property(lambda self: self.stoi[PAD])
    start_id = property(lambda self: self.stoi[START])
    end_id = property(lambda self: self.stoi[END])
    unk_id = property(lambda self: self.stoi[UNK])

    def __len__(self) -> int:
        return len(self.itos)

    def token_ids(self, caption: str) -> list[int]:
        """The caption's token ids, without <start>/<end>."""
        return [self.stoi.get(t, self.unk_id) for t in tokenize(caption)]

    def text(self, ids: list[int]) -> str:
        """Token ids (no specials) -> normal text."""
        return " ".join(readable(self.itos[i]) for i in ids)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        """<start> t1 .. tn <end>; with max_len the tokens are truncated so the whole fits."""
        ids = self.token_ids(caption)
        if max_len is not None:
            ids = ids[: max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Normal text of the ids up to the first <end> (<start> and <pad> skipped):
        normalise(caption) for what encode(caption) gave, when no token was <unk>."""
        kept = []
        for i in map(int, ids):
            if i == self.end_id:
                break
            if i not in (self.start_id, self.pad_id):
                kept.append(i)
        return self.text(kept)

    def spelled_words(self, caption: str) -> list[str]:
        """The caption's words as this vocabulary spells them (count_unknown's input)."""
        return tokenize(caption)

    def count_unknown(self, words: list[str]) -> int:
        """How many of these tokenize() words the vocabulary cannot spell without <unk>."""
        return sum(w not in self.stoi for w in words)

    def reward_words(self, caption: str, language: str | None = None) -> list[Hashable]:
        """A reference caption as SCST's CIDEr-D counts it: its words, as word ids where the
        vocabulary has them (a sample's ids are then its words, see sampled_words), else the
        word itself, so a sampled <unk> matches nothing, as it would once decoded to text.
        `language` does not matter: the word kind holds only languages written with spaces."""
        return [self.stoi.get(w, w) for w in tokenize(caption)]

    def sampled_words(self, ids: list[int], language: str | None = None) -> list[Hashable]:
        """A sampled caption (ids, <end> last when it was sampled) as CIDEr-D counts it, in the
        units of reward_words, <end> kept. Word ids are words: nothing to do."""
        return ids

    def payload(self) -> list[str] | dict:
        """What a checkpoint stores (plain types, for torch.load(weights_only=True)): the word list,
        with the languages beside it in a multilingual vocabulary."""
        return {"itos": list(self.itos), "languages": self.languages} if self.languages else list(self.itos)

    def to_list(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: list[str]) -> "Vocab":
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"not a vocabulary: the first entries must be {SPECIALS}")
        return cls(itos[len(SPECIALS):])

    def save(self, path: str | Path) -> None:
        languages = {"languages": self.languages} if self.languages else {}  # one language: as before languages
        Path(path).write_text(json.dumps({"itos": self.itos, **languages}, indent=0) + "\n")



def build_word_vocab(train_captions: Iterable[str], cfg: VocabConfig) -> Vocab:
    """The word vocabulary from the TRAIN captions only (every kind: pipeline.data.vocabularies)."""
    counts = Counter(t for c in train_captions for t in tokenize(c))
    # Sort by frequency, then alphabetically, so the same captions always give the same ids.
    ranked = sorted((w for w, n in counts.items() if n >= cfg.min_freq and w not in cfg.special_tokens),
                    key=lambda w: (-counts[w], w))
    if cfg.max_size:
        ranked = ranked[: max(0, cfg.max_size - len(SPECIALS) - len(cfg.special_tokens))]
    if not ranked:
        raise ValueError(f"no word occurs at least vocab.min_freq={cfg.min_freq} times in the train captions")
    return Vocab([*cfg.special_tokens, *ranked])


def unk_rate(vocab: Vocab, captions: Iterable[str]) -> float:
    """Share of caption words (as the vocabulary spells them) it cannot spell without <unk>."""
    words = [w for caption in captions for w in vocab.spelled_words(caption)]
    return vocab.count_unknown(words) / len(words) if words else 0.0
