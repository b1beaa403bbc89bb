"""How caption text is split into the tokens the metrics compare, per language: the PTB tokens
for English (as the English-only pipeline always scored), lower-cased Unicode words for other
languages written with spaces, characters for Japanese and Chinese. evaluate names the
tokenizer of each language in reports/eval_info.json."""
from __future__ import annotations

import re
import unicodedata

from pipeline.data.vocab import one_line, ptb_tokens

ENGLISH = "en"  # the first language of a model that has it: what a caller gets by default
# Written without spaces between words: scored per character; the word vocabulary cannot hold them.
CHARACTER_LANGUAGES = frozenset({"ja", "zh"})
TOKENIZERS = {
    "ptb": "PTB tokens (English): pycocoevalcap's PTBTokenizer with the coco backend, its Python stand-in otherwise",
    "words": "Unicode words: NFC, lower case, runs of letters and digits, punctuation dropped",
    "characters": "characters: one token per character (runs of ASCII letters and digits kept whole), "
                  "spaces and punctuation dropped",
}
_WORDS = re.compile(r"\w+|[^\w\s]")
_CHARACTERS = re.compile(r"[a-z0-9]+|\S")


def base_language(code: str) -> str:
    """'zh-tw' -> 'zh': the language, without its region or script."""
    return code.split("-")[0]


def scoring_tokenizer(code: str) -> str:
    """The TOKENIZERS key that splits text in language `code` for scoring."""
    if base_language(code) == ENGLISH:
        return "ptb"
    return "characters" if base_language(code) in CHARACTER_LANGUAGES else "words"


def score_tokens(text: str, code: str) -> list[str]:
    """The tokens the metrics compare for a caption in language `code`: PTB tokens for English
    (pipeline.data.vocab.ptb_tokens, as the English-only pipeline always did), lower-cased
    Unicode words for other languages written with spaces, characters for Japanese and Chinese."""
    kind = scoring_tokenizer(code)
    if kind == "ptb":
        return ptb_tokens(text)
    text = unicodedata.normalize("NFC", one_line(text)).lower()
    pieces = (_WORDS if kind == "words" else _CHARACTERS).findall(text)
    return [p for p in pieces if not all(unicodedata.category(c).startswith("P") for c in p)]
