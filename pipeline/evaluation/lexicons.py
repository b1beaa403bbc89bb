"""What the grounded metric's parser (pipeline.evaluation.grounded_parse) needs to know of
each caption language: the words for colours, sizes, shapes and numbers in all their
inflected forms, mapped to the scenes' English names, the relation phrases and their
meaning, and the few points where the grammar differs (adjectives after the noun in French
and Spanish, a Japanese place phrase that comes after its landmark). Each lexicon is built
from the generator's own word tables (pipeline.data.scene_text), plus paraphrases a model
may write, so the generator and the parser cannot drift apart word by word."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from pipeline.data.scene_text import check_language, de, es, fr, ja
from pipeline.data.scenes import COLOURS, RADIUS, SHAPES

Phrases = dict[tuple[str, ...], tuple[str, str]]


@dataclass(frozen=True)
class Lexicon:
    colours: dict[str, str]  # every form of a colour word -> the scene's colour name
    sizes: dict[str, str]
    shapes: dict[str, str]  # singular and plural forms -> shape name
    numbers: dict[str, int]
    generic: frozenset[str]  # "shapes" in "three shapes"
    articles: frozenset[str]
    # Token sequence -> (kind, direction). rel: "a <p> b" (a is <direction> of b); withrel:
    # "b with a <p>"; pos: "a <p>"; order: "<p> a, b and c"; line: "a, b and c <p>";
    # between: "b <p> a and c"; between_rev: "a and c <p> b"; with, and, ",".
    phrases: Phrases
    fillers: frozenset[str]  # skipped when looking for the object next to a phrase
    colour_clauses: tuple[tuple[str, ...], ...] = ()  # "a triangle that is red": words between shape and colour
    adjectives_after: bool = False  # colours and sizes may follow the noun ("une étoile rouge")
    skip_before_object: frozenset[str] = frozenset()  # "left of the b and OF the c"
    subject_first: bool = False  # "a WA b no hidari ni": a place phrase with no object after it is about the topic
    word_pattern: str | None = r"[a-z]+|[,:;]"  # None: no spaces, cut by longest match over the lexicon
    words: frozenset[str] = frozenset()  # more words to cut unspaced text at

    @cached_property
    def longest(self) -> int:
        return max(map(len, self.phrases))

    @cached_property
    def _vocabulary(self) -> tuple[frozenset[str], int]:
        tables = (self.colours, self.sizes, self.shapes, self.numbers, self.generic, self.articles, self.fillers,
                  self.words, {token for phrase in self.phrases for token in phrase})
        vocabulary = frozenset(word for table in tables for word in table)
        return vocabulary, max(map(len, vocabulary))

    def tokens(self, words: list[str]) -> tuple[list[str], list[int]]:
        """(tokens, index of the word each token comes from) of a caption split at spaces."""
        if self.word_pattern is None:
            return self._segment(words)
        tokens, word_of = [], []
        for w, word in enumerate(words):
            for token in re.findall(self.word_pattern, unicodedata.normalize("NFC", word).lower()):
                tokens.append(token)
                word_of.append(w)
        return tokens, word_of

    def _segment(self, words: list[str]) -> tuple[list[str], list[int]]:
        # Spaces carry no meaning here (a model's output may have them anywhere): cut the
        # text as one string, longest known word first, an unknown character on its own.
        folded = [unicodedata.normalize("NFKC", word).lower() for word in words]
        text, owner = "".join(folded), [w for w, word in enumerate(folded) for _ in word]
        vocabulary, longest = self._vocabulary
        tokens, word_of, i = [], [], 0
        while i < len(text):
            n = next((n for n in range(min(longest, len(text) - i), 1, -1) if text[i: i + n] in vocabulary), 1)
            tokens.append(text[i: i + n])
            word_of.append(owner[i])
            i += n
        return tokens, word_of


def _phrases(*groups: tuple[str, dict[str, str] | dict[str, tuple[str, ...]]]) -> Phrases:
    """(kind, {direction: phrase or phrases}) groups -> token sequence -> (kind, direction)."""
    out: Phrases = {}
    for kind, table in groups:
        for direction, texts in table.items():
            for text in (texts,) if isinstance(texts, str) else texts:
                out[tuple(re.findall(r"[^\W\d_]+|[,:;]", text.lower())) or (text,)] = (kind, direction)
    return out


def _glue(kind: str, table: dict, endings: tuple[str, ...]) -> tuple[str, dict[str, tuple[str, ...]]]:
    """Each phrase of `table` followed by each form of a preposition: "à gauche" + de, d', du."""
    return kind, {d: tuple(f"{text} {e}" for text in ((texts,) if isinstance(texts, str) else texts) for e in endings)
                  for d, texts in table.items()}


EN = Lexicon(
    colours={c: c for c in COLOURS}, sizes={s: s for s in RADIUS},
    shapes={**{s: s for s in SHAPES}, **{s + ("es" if s.endswith("ss") else "s"): s for s in SHAPES}},
    numbers={"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5},
    generic=frozenset({"shape", "shapes", "object", "objects", "thing", "things"}),
    articles=frozenset({"a", "an", "the"}),
    phrases=_phrases(
        ("rel", {"left": ("to the left of", "on the left of", "left of"),
                 "right": ("to the right of", "on the right of", "right of"),
                 "above": ("above", "on top of", "over"), "below": ("below", "under", "underneath", "beneath")}),
        ("withrel", {"left": "to its left", "right": "to its right", "above": "above it",
                     "below": ("below it", "under it")}),
        ("pos", {"left": "on the left", "right": "on the right", "above": "at the top", "below": "at the bottom",
                 "middle": ("in the middle", "in the center", "in the centre")}),
        ("order", {"left": "from left to right", "right": "from right to left", "above": "from top to bottom",
                   "below": "from bottom to top"}),
        ("line", {"left": "in a row", "above": "in a column"}),
        ("between", {"": "between"}), ("with", {"": "with"}), ("and", {"": "and"}), (",", {"": ","}),
    ),
    fillers=frozenset({"is", "are", "which", "that", "there", ":"}),
    colour_clauses=(("that", "is"), ("which", "is")),
)


def _forms(table: dict[str, str | tuple[str, ...]], endings: tuple[str, ...] = ("",)) -> dict[str, str]:
    """Every word of `table` (name -> word or words) with every ending, lower-cased -> name."""
    return {(word + e).lower(): name for name, words in table.items()
            for word in ((words,) if isinstance(words, str) else words) for e in endings}


GERMAN_ENDINGS = ("", "e", "er", "es", "en", "em")
DE = Lexicon(
    colours=_forms({**de.COLOURS, "orange": ("orangefarben", "orange"), "purple": ("violett", "lila")}, GERMAN_ENDINGS),
    sizes=_forms({**de.SIZES, "large": ("groß", "gross")}, GERMAN_ENDINGS),
    shapes=_forms({shape: (sg, pl) for shape, (sg, _, pl) in de.NOUNS.items()}, ("", "n", "s", "es")),
    numbers={**_forms({1: ("einzeln", "einzig")}, GERMAN_ENDINGS), "zwei": 2, "drei": 3, "vier": 4, "fünf": 5},
    generic=frozenset({"formen", "form", "objekte", "objekt", "figuren", "figur", "dinge"}),
    articles=frozenset({"ein", "eine", "einen", "einem", "einer", "eines", "der", "die", "das", "den", "dem", "des"}),
    phrases=_phrases(
        ("rel", {**de.REL}), _glue("rel", {"left": "links", "right": "rechts"}, ("vom", "neben")),
        _glue("rel", {"above": "oberhalb", "below": "unterhalb"}, ("von", "vom")),
        ("withrel", de.BESIDE), ("pos", {**de.SIDE, "middle": de.MIDDLE}),
        ("order", {**de.ORDER, "right": "von rechts nach links", "below": "von unten nach oben"}),
        ("line", {"left": (de.LINE["left"], "in einer reihe"), "above": (de.LINE["above"], "übereinander")}),
        ("between", {"": "zwischen"}), ("with", {"": "mit"}), ("and", {"": "und"}), (",", {"": ","}),
    ),
    fillers=frozenset({"ist", "sind", "liegt", "liegen", "befindet", "sich", "es", "gibt", "der", "die", "das",
                       "welcher", "welche", "welches", ":"}),
    colour_clauses=(("in",),), skip_before_object=frozenset({"von", "vom"}), word_pattern=r"[^\W\d_]+|[,:;]",
)


def _plural(word: str, spanish: bool = False) -> str:
    if word.endswith(("s", "x")):
        return word
    return word + ("es" if spanish and not word.endswith(("a", "e", "o")) else "s")


def _romance(module, spanish: bool) -> dict[str, dict[str, str]]:
    """Colour and size forms of French or Spanish: masculine, feminine and their plurals."""
    def inflected(words: tuple[str, ...]) -> tuple[str, ...]:
        return (*words, *(_plural(w, spanish) for w in words))
    return {"colours": _forms({c: inflected(w) for c, w in module.COLOURS.items()}),
            "sizes": _forms({s: inflected(w) for s, w in module.SIZES.items()})}


FR = Lexicon(
    **_romance(fr, spanish=False),
    shapes=_forms({shape: (noun, _plural(noun)) for shape, (noun, _) in fr.NOUNS.items()}),
    numbers={"seul": 1, "seule": 1, "unique": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5},
    generic=frozenset({"formes", "forme", "objets", "objet", "figures", "figure"}),
    articles=frozenset({"un", "une", "le", "la", "l", "les", "des"}),
    phrases=_phrases(
        _glue("rel", {**fr.REL, "below": ("en dessous", "au dessous")}, ("de", "d", "du")),
        ("rel", {"below": "sous"}),
        ("withrel", {**fr.BESIDE, "below": ("en dessous", "au dessous")}),
        ("pos", {**fr.SIDE, "middle": (fr.MIDDLE, "au centre")}),
        ("order", {**fr.ORDER, "right": "de droite à gauche", "below": "de bas en haut"}),
        ("line", {"left": (fr.LINE["left"], "sur une ligne", "en rangée"), "above": fr.LINE["above"]}),
        ("between", {"": "entre"}), ("with", {"": "avec"}), ("and", {"": "et"}), (",", {"": ","}),
    ),
    fillers=frozenset({"est", "sont", "qui", "il", "y", "a", "se", "trouve", ":"}),
    colour_clauses=(("de", "couleur"),), adjectives_after=True, skip_before_object=frozenset({"de", "d", "du"}),
    word_pattern=r"[^\W\d_]+|[,:;]",
)
ES = Lexicon(
    **_romance(es, spanish=True),
    shapes=_forms({shape: (noun, pl) for shape, (noun, _, pl) in es.NOUNS.items()}),
    numbers={"solo": 1, "sola": 1, "único": 1, "única": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5},
    generic=frozenset({"formas", "forma", "objetos", "objeto", "figuras", "figura"}),
    articles=frozenset({"un", "una", "unos", "unas", "el", "la", "los", "las"}),
    phrases=_phrases(
        _glue("rel", {d: t.removesuffix(" de") for d, t in es.REL.items()}, ("de", "del")),
        ("withrel", es.BESIDE), ("pos", {**es.SIDE, "middle": (es.MIDDLE, "en el medio", "en medio")}),
        ("order", {"left": es.ORDER["left"], "right": "de derecha a izquierda",
                   "above": (es.ORDER["above"], "de arriba a abajo"),
                   "below": ("de abajo arriba", "de abajo a arriba")}),
        ("line", {"left": (es.LINE["left"], "en una fila"), "above": (es.LINE["above"], "en una columna")}),
        ("between", {"": "entre"}), ("with", {"": "con"}), ("and", {"": ("y", "e")}), (",", {"": ","}),
    ),
    fillers=frozenset({"está", "están", "que", "hay", "se", "encuentra", ":"}),
    colour_clauses=(("de", "color"),), adjectives_after=True, skip_before_object=frozenset({"de", "del"}),
    word_pattern=r"[^\W\d_]+|[,:;]",
)
# "X の左に Y": Y is left of X, so X is right of Y -- the claim's direction is the mirror.
MIRROR = {"left": "right", "right": "left", "above": "below", "below": "above"}
JA_COLOURS = {  # the colour nouns and their other adjective forms
    "red": ("赤", "赤色の"), "green": ("緑", "緑色の"), "blue": ("青", "青色の"), "yellow": ("黄色", "黄色の"),
    "purple": ("紫", "紫色の"), "orange": ("オレンジ", "オレンジの", "オレンジ色"), "white": ("白", "白色の"),
    "black": ("黒", "黒色の"),
}
JA_SHAPES = {"circle": ("円",), "square": ("正方形",), "triangle": ("三角形",), "star": ("星形",), "diamond": ("菱形",),
             "cross": ("十字形",)}
JA = Lexicon(
    colours=_forms({c: (w, *JA_COLOURS[c]) for c, w in ja.COLOURS.items()}),
    sizes={**_forms(ja.SIZES), "小さな": "small", "大きな": "large"},
    shapes=_forms({s: (w, *JA_SHAPES[s]) for s, w in ja.NOUNS.items()}),
    numbers={**{w: n for n, w in ja.NUMBERS.items()}, "ひとつの": 1, "ふたつの": 2, "みっつの": 3},
    generic=frozenset({ja.SHAPES_WORD, "物体"}),
    articles=frozenset(),
    phrases=_phrases(
        ("rel", {MIRROR[d]: (f"の{w}に", f"の{w}の", f"その{w}に", f"の{ja.CLOSE[d]}に") for d, w in ja.SIDE.items()}),
        ("pos", {**{d: (w, f"{w}に", ja.END[d]) for d, w in ja.SIDE.items()}, "middle": (ja.MIDDLE, "中央")}),
        ("order", {d: (f"{w}から順に", f"{w}から{ja.SIDE[MIRROR[d]]}へ") for d, w in ja.SIDE.items()}),
        ("line", {"left": (ja.LINE["left"], "横一列"), "above": (ja.LINE["above"], "縦一列")}),
        ("between_rev", {"": ("の間に", "の間")}), ("and", {"": "と"}), (",", {"": ("、", ",")}),
    ),
    fillers=frozenset({"が", "は", "に", "で", "を", "も", "です", "ます", "あり", "あります", "ある", "：", ":", "。"}),
    subject_first=True, word_pattern=None,
    words=frozenset({*ja.BACKGROUNDS.values(), "背景", "画像", "の", "色が", "描かれた", "並んでいます", "写っています"}),
)

LEXICONS = {"en": EN, "de": DE, "fr": FR, "es": ES, "ja": JA}  # one per pipeline.data.scene_text.LANGUAGES


def lexicon(language: str) -> Lexicon:
    check_language(language, "grounded metric")
    return LEXICONS[language]
