"""Grounded scene metric: what a caption of a synthetic scene (pipeline.data.scenes) says about
the image -- which objects, how many, where -- checked against the scene's true objects.

BLEU and CIDEr reward wording shared with the references, so a caption that swaps two
colours or reverses an order still scores well; this metric does not. A small rule-based
parser (pipeline.evaluation.grounded_parse) reads scene captions in every language the
generator writes (the templates and what a model trained on them writes, with or without
punctuation); words it does not understand are ignored.
Relations are judged on the scene's relation axis, taken from the coordinates: "x" (a row)
when the objects spread more across than down, else "y" (a column) -- the generator keeps
the other coordinate within a few pixels, so the larger spread is the axis."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.evaluation.grounded_parse import Claim, Mention, Parse, parse

__all__ = ["CaptionScore", "Claim", "Mention", "Parse", "aggregate", "load_objects", "parse", "scene_axis",
           "score_caption"]
AXIS_OF = {"left": "x", "right": "x", "above": "y", "below": "y"}


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
    repeated: int = 0  # mentions of a colour-shape pair the caption named before (the generator never repeats one)
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


def score_caption(caption: str, objects: list[dict], language: str = "en") -> CaptionScore:
    """What `caption`, written in `language`, claims about the scene holding `objects` (dicts
    with shape, colour, size, x, y, as pipeline.data.scenes writes them), and which of its
    words are wrong (indices into caption.split(): a Japanese caption without spaces is one)."""
    p = parse(caption, language)
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
    # "a small purple square a small purple square": one object listed twice, as if there were
    # two. A second mention inside a relation is the same object again ("B is right of A, C is
    # right of B"), not a repeat. Precision still counts each mention of a real object as right
    # (figures stay comparable with earlier runs); `repeated_object_rate` counts these captions.
    in_relations = {k for claim in p.claims for k in claim.mentions}
    named_pairs = set()
    for k, m in enumerate(p.mentions):
        if not m.colour:
            continue
        if (m.colour, m.shape) in named_pairs and k not in in_relations:
            score.repeated += 1
            wrong.update((m.at["colour"], m.at["shape"]))
        named_pairs.add((m.colour, m.shape))
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
        # captions that name some object twice: object precision and exact set cannot see them
        "repeated_object_rate": sum(s.repeated > 0 for s in scores) / len(scores) if scores else None,
        "size_accuracy": ratio("sizes_correct", "sizes"),
        "n": len(scores),
    }


def load_objects(value: object) -> list[dict] | None:
    """A manifest's `objects` cell (JSON text) as a list of objects; None when absent."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return None
    objects = json.loads(value) if isinstance(value, str) else list(value)
    return objects if objects else None
