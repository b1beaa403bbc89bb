"""Grounded scene metric: what a caption of a synthetic scene (pipeline.data.scenes) says about
the image -- which objects, how many, where -- checked against the scene's true objects.

BLEU and CIDEr reward wording shared with the references, so a caption that swaps two
colours or reverses an order still scores well; this metric does not. A small rule-based
parser reads English scene captions (the generator's templates and what a model trained on
them writes, with or without punctuation); words it does not understand are ignored.
Relations are judged on the scene's relation axis, taken from the coordinates: "x" (a row)
when the objects spread more across than down, else "y" (a column) -- the generator keeps
the other coordinate within a few pixels, so the larger spread is the axis."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pipeline.data.scenes import COLOURS, RADIUS, SHAPES

SIZES = tuple(RADIUS)
PLURALS = {s + ("es" if s.endswith("ss") else "s"): s for s in SHAPES}  # circles, crosses
GENERIC = {"shape", "shapes", "object", "objects", "thing", "things"}
NUMBERS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5}
ARTICLES = {"a", "an", "the"}
AXIS_OF = {"left": "x", "right": "x", "above": "y", "below": "y"}
# (kind, direction) of each phrase. rel: "a <p> b"; withrel: "b with a <p>"; pos: "a <p>";
# order: "<p> a, b and c"; line: "a, b and c <p>" (a row reads left to right).
PHRASES = {tuple(phrase.split()): (kind, direction) for kind, direction, phrases in [
    ("rel", "left", "to the left of|on the left of|left of"),
    ("rel", "right", "to the right of|on the right of|right of"),
    ("rel", "above", "above|on top of|over"), ("rel", "below", "below|under|underneath|beneath"),
    ("withrel", "left", "to its left"), ("withrel", "right", "to its right"),
    ("withrel", "above", "above it"), ("withrel", "below", "below it|under it"),
    ("pos", "left", "on the left"), ("pos", "right", "on the right"), ("pos", "above", "at the top"),
    ("pos", "below", "at the bottom"), ("pos", "middle", "in the middle|in the center|in the centre"),
    ("order", "left", "from left to right"), ("order", "right", "from right to left"),
    ("order", "above", "from top to bottom"), ("order", "below", "from bottom to top"),
    ("line", "left", "in a row"), ("line", "above", "in a column"),
    ("between", "", "between"), ("with", "", "with"), ("and", "", "and"), (",", "", ","),
] for phrase in phrases.split("|")}
LONGEST = max(map(len, PHRASES))  # longest match wins: "to the left of" is no "on the left"
FILLERS = {"is", "are", "which", "that", "there", ":"}  # skipped when looking for a neighbouring object


@dataclass
class Mention:  # "the small red circle", "two red circles" (count 2), "a triangle that is red"
    shape: str
    colour: str | None
    size: str | None
    count: int
    at: dict[str, int]  # token index of each part: shape, colour, size, number
    start: int  # token span [start, end), article included
    end: int


@dataclass
class Claim:
    kind: str  # rel (a dir b) | between (b, a, c) | pos (a at dir) | axis (all along dir's axis)
    direction: str
    mentions: tuple[int, ...]
    tokens: tuple[int, ...]  # the phrase, marked when the claim is false


@dataclass
class Parse:
    words: list[str]
    tokens: list[str]
    word_of: list[int]  # token index -> word index
    mentions: list[Mention] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)  # (claimed number of objects, token)


def parse(caption: str) -> Parse:
    words = str(caption).split()
    tokens, word_of = [], []
    for w, word in enumerate(words):
        for token in re.findall(r"[a-z]+|[,:;]", word.lower()):
            tokens.append(token)
            word_of.append(w)
    p = Parse(words, tokens, word_of)
    _find_mentions(p)
    _find_claims(p, _symbols(p))
    return p


def _find_mentions(p: Parse) -> None:
    t, used = p.tokens, -1
    for i, token in enumerate(t):
        if token in NUMBERS and i + 1 < len(t) and t[i + 1] in GENERIC:
            p.counts.append((NUMBERS[token], i))  # "three shapes", "two objects"
        shape = token if token in SHAPES else PLURALS.get(token)
        if shape is None:
            continue
        at, colour, size, j = {"shape": i}, None, None, i - 1
        while j > used and (t[j] in COLOURS or t[j] in SIZES):
            if t[j] in COLOURS and colour is None:
                colour, at["colour"] = t[j], j
            elif t[j] in SIZES and size is None:
                size, at["size"] = t[j], j
            j -= 1
        count = 1
        if j > used and t[j] in NUMBERS:
            at["number"], count = j, NUMBERS[t[j]]
            j -= 1
        if j > used and t[j] in ARTICLES:
            j -= 1
        end = i + 1
        if colour is None and t[i + 1: i + 3] in (["that", "is"], ["which", "is"]) and i + 3 < len(t) \
                and t[i + 3] in COLOURS:  # "a small triangle that is red"
            colour, at["colour"], end = t[i + 3], i + 3, i + 4
        p.mentions.append(Mention(shape, colour, size, count, at, j + 1, end))
        used = end - 1
    if len(p.mentions) == 1 and "number" in p.mentions[0].at and p.mentions[0].count == 1:
        p.counts.append((1, p.mentions[0].at["number"]))  # "a single red circle": one object in all


def _symbols(p: Parse) -> list[tuple[str, str, tuple[int, ...]]]:
    """The caption as (kind, value, tokens): objects ("m", index), phrases, and "w" for the rest."""
    starts = {m.start: k for k, m in enumerate(p.mentions)}
    out, i = [], 0
    while i < len(p.tokens):
        if i in starts:
            m = p.mentions[starts[i]]
            out.append(("m", str(starts[i]), tuple(range(m.start, m.end))))
            i = m.end
            continue
        for n in range(LONGEST, 0, -1):
            kind_dir = PHRASES.get(tuple(p.tokens[i: i + n])) if i + n <= len(p.tokens) else None
            if kind_dir:
                out.append((*kind_dir, tuple(range(i, i + n))))
                i += n
                break
        else:
            out.append(("w", p.tokens[i], (i,)))
            i += 1
    return out


def _find_claims(p: Parse, s: list[tuple[str, str, tuple[int, ...]]]) -> None:
    def near(k: int, step: int) -> int | None:  # the object next to symbol k, past fillers
        k += step
        while 0 <= k < len(s) and (s[k][0] == "," or s[k][0] == "w" and s[k][1] in FILLERS):
            k += step
        return k if 0 <= k < len(s) and s[k][0] == "m" else None

    def run(k: int, step: int) -> list[int]:  # "a, b and c": objects joined by commas/and
        found = []
        while (k := near(k, step)) is not None:
            found.append(k)
            nxt = k + step  # next to a joiner, or to the next object when punctuation was dropped
            if not (0 <= nxt < len(s) and s[nxt][0] in ("and", ",", "m")):
                break
            k = nxt if s[nxt][0] == "and" else k
        return found[::step]

    def m(k: int) -> int:
        return int(s[k][1])

    def chain(ks: list[int], direction: str, tokens: tuple[int, ...]) -> None:
        for a, b in zip(ks, ks[1:]):
            p.claims.append(Claim("rel", direction, (m(a), m(b)), tokens))

    for k, (kind, direction, tokens) in enumerate(s):
        before, after = near(k, -1), near(k, 1)
        if kind == "rel" and before is not None and after is not None:
            p.claims.append(Claim("rel", direction, (m(before), m(after)), tokens))
            more = after + 1  # "the a is left of the b and the c": a is left of c too
            while more + 1 < len(s) and s[more][0] == "and" and s[more + 1][0] == "m" and \
                    (more + 2 >= len(s) or s[more + 2][0] not in ("rel", "pos", "withrel", "line")):
                p.claims.append(Claim("rel", direction, (m(before), m(more + 1)), tokens))
                more += 2
        elif kind == "withrel" and before is not None:  # "b with a to its left"
            anchor = near(before - 1 if before > 0 and s[before - 1][0] in ("with", "and") else before, -1)
            if anchor is not None:
                p.claims.append(Claim("rel", direction, (m(before), m(anchor)), tokens))
        elif kind == "between" and before is not None:
            ends = run(k, 1)
            if len(ends) == 2:
                p.claims.append(Claim("between", "", (m(before), m(ends[0]), m(ends[1])), tokens))
        elif kind == "pos" and (before is not None or after is not None):
            p.claims.append(Claim("pos", direction, (m(before if before is not None else after),), tokens))
        elif kind == "order":
            ks = run(k, 1) if after is not None else run(k, -1)
            chain(ks, direction, tokens) if len(ks) >= 2 else p.claims.append(Claim("axis", direction, (), tokens))
        elif kind == "line":
            ks = run(k, -1)
            chain(ks, direction, tokens) if len(ks) >= 2 else p.claims.append(Claim("axis", direction, (), tokens))


# ---------------------------------------------------------------------------- scoring

@dataclass
class CaptionScore:
    n_objects: int
    named: int = 0  # colour+shape objects the caption names (a plural counts its number)
    named_correct: int = 0  # ... that exist with the size named, if any
    recalled: int = 0  # objects of the image named correctly
    exact_set: bool = False  # named colour-shape pairs == the image's pairs
    relations: int = 0
    relations_held: int = 0
    count_claims: int = 0  # 0 or 1: whether the caption says how many objects there are
    count_correct: int = 0
    sizes: int = 0  # size words on objects that exist
    sizes_correct: int = 0
    wrong: list[int] = field(default_factory=list)  # indices of wrong words in caption.split()
    words: list[str] = field(default_factory=list)

    @property
    def object_precision(self) -> float | None:
        return self.named_correct / self.named if self.named else None

    @property
    def wrong_words(self) -> list[str]:
        return [self.words[i] for i in self.wrong]


def scene_axis(objects: list[dict]) -> str | None:
    """'x' for a row, 'y' for a column, None for a single object."""
    if len(objects) < 2:
        return None
    xs, ys = [o["x"] for o in objects], [o["y"] for o in objects]
    return "x" if max(xs) - min(xs) >= max(ys) - min(ys) else "y"


def score_caption(caption: str, objects: list[dict]) -> CaptionScore:
    """What `caption` claims about the scene holding `objects` (dicts with shape, colour,
    size, x, y, as pipeline.data.scenes writes them), and which of its words are wrong."""
    p = parse(caption)
    score = CaptionScore(n_objects=len(objects), words=p.words)
    wrong: set[int] = set()
    pairs = {(o["colour"], o["shape"]): o for o in objects}
    resolved: list[dict | None] = []
    recalled = set()
    for m in p.mentions:
        same_shape = [o for o in objects if o["shape"] == m.shape]
        obj = pairs.get((m.colour, m.shape)) if m.colour else (same_shape[0] if len(same_shape) == 1 else None)
        resolved.append(obj)
        if not same_shape:
            wrong.add(m.at["shape"])
        if m.colour and obj is None and not any(o["colour"] == m.colour for o in same_shape or objects):
            wrong.add(m.at["colour"])
        size_ok = m.size is None or (obj is not None and obj["size"] == m.size)
        if m.size and obj is not None:
            score.sizes += 1
            score.sizes_correct += size_ok
        if not size_ok and (obj is not None or not any(o["size"] == m.size for o in same_shape or objects)):
            wrong.add(m.at["size"])
        if m.colour:
            score.named += m.count
            if obj is not None and size_ok:
                score.named_correct += 1  # one object per colour-shape pair, however many are named
                recalled.add((m.colour, m.shape))
        if m.count > 1 and "number" in m.at:
            wrong.add(m.at["number"])  # the generator never repeats a colour-shape pair
    score.recalled = len(recalled)
    score.exact_set = {(m.colour, m.shape) for m in p.mentions if m.colour} == set(pairs)
    axis = scene_axis(objects)
    for claim in p.claims:
        held = _holds(claim, [resolved[k] for k in claim.mentions], objects, axis)
        score.relations += 1
        score.relations_held += held
        if not held:
            wrong.update(claim.tokens)
    for number, token in p.counts[:1]:
        score.count_claims, score.count_correct = 1, int(number == len(objects))
        if number != len(objects):
            wrong.add(token)
    score.wrong = sorted({p.word_of[t] for t in wrong})
    return score


def _holds(claim: Claim, objs: list[dict | None], objects: list[dict], axis: str | None) -> bool:
    if claim.kind == "axis":
        return axis == AXIS_OF[claim.direction]
    if any(o is None for o in objs) or len({id(o) for o in objs}) < len(objs):
        return False  # an object that is not in the image (or named twice) stands nowhere
    along = axis or "x"
    if claim.kind == "between":
        b, a, c = (o[along] for o in objs)
        return axis is not None and min(a, c) < b < max(a, c)
    if claim.kind == "pos":
        value, ranks = objs[0][along], sorted(o[along] for o in objects)
        if claim.direction == "middle":
            return len(objects) >= 3 and ranks[0] < value < ranks[-1]
        first = claim.direction in ("left", "above")
        return axis == AXIS_OF[claim.direction] and value == (ranks[0] if first else ranks[-1])
    a, b = (o[along] for o in objs)
    ahead = claim.direction in ("left", "above")  # smaller coordinate: left, or higher up
    return axis == AXIS_OF[claim.direction] and (a < b if ahead else a > b)


# ---------------------------------------------------------------------------- aggregate

def aggregate(scores: list[CaptionScore]) -> dict:
    """Micro-averaged figures over `scores`, overall and by number of objects
    ({"1": {...}, "2": {...}, "3": {...}}); a figure with nothing to count is None."""
    block = _figures(scores)
    block["by_objects"] = {str(n): _figures([s for s in scores if s.n_objects == n])
                           for n in sorted({s.n_objects for s in scores})}
    return block


def _figures(scores: list[CaptionScore]) -> dict:
    def ratio(num: str, den: str) -> float | None:
        total = sum(getattr(s, den) for s in scores)
        return sum(getattr(s, num) for s in scores) / total if total else None

    return {
        "object_precision": ratio("named_correct", "named"),
        "object_recall": ratio("recalled", "n_objects"),
        "exact_set": sum(s.exact_set for s in scores) / len(scores) if scores else None,
        "relation_accuracy": ratio("relations_held", "relations"),
        "count_accuracy": ratio("count_correct", "count_claims"),
        "size_accuracy": ratio("sizes_correct", "sizes"),
        "n": len(scores),
    }


def load_objects(value: object) -> list[dict] | None:
    """A manifest's `objects` cell (JSON text) as a list of objects; None when absent."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return None
    objects = json.loads(value) if isinstance(value, str) else list(value)
    return objects if objects else None
