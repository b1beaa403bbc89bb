"""The grounded metric's caption parser: which objects a scene caption names, how many, and
what it says about where they are, in any caption language (pipeline.evaluation.lexicons).

A small rule-based reader of the generator's templates and of what a model trained on them
writes, with or without punctuation; words it does not understand are ignored. Objects are
noun phrases around a shape word (colour and size words before it, or after it where the
language puts them there); everything else is matched against the language's phrases,
longest first, and claims are read off the objects next to each phrase."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.evaluation.lexicons import Lexicon, lexicon


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


def parse(caption: str, language: str = "en") -> Parse:
    lx = lexicon(language)
    words = str(caption).split()
    p = Parse(words, *lx.tokens(words))
    _find_mentions(p, lx)
    _find_claims(p, lx, _symbols(p, lx))
    return p


def _find_mentions(p: Parse, lx: Lexicon) -> None:
    t, used = p.tokens, -1
    for i, token in enumerate(t):
        if token in lx.numbers and i + 1 < len(t) and t[i + 1] in lx.generic:
            p.counts.append((lx.numbers[token], i))  # "three shapes", "two objects"
        shape = lx.shapes.get(token)
        if shape is None or i <= used:  # (a word already read as part of the object before)
            continue
        at: dict[str, int] = {"shape": i}
        colour, size, j = None, None, i - 1
        while j > used and (t[j] in lx.colours or t[j] in lx.sizes):
            if t[j] in lx.colours and colour is None:
                colour, at["colour"] = lx.colours[t[j]], j
            elif t[j] in lx.sizes and size is None:
                size, at["size"] = lx.sizes[t[j]], j
            j -= 1
        count = 1
        if j > used and t[j] in lx.numbers:
            at["number"], count = j, lx.numbers[t[j]]
            j -= 1
        if j > used and t[j] in lx.articles:
            j -= 1
        end = i + 1
        while lx.adjectives_after and end < len(t) and (
                t[end] in lx.colours and colour is None or t[end] in lx.sizes and size is None):
            if t[end] in lx.colours and colour is None:  # "une étoile rouge", "una estrella roja pequeña"
                colour, at["colour"] = lx.colours[t[end]], end
            else:
                size, at["size"] = lx.sizes[t[end]], end
            end += 1
        for clause in lx.colour_clauses:  # "a small triangle that is red"
            k = end + len(clause)
            if colour is None and tuple(t[end: k]) == clause and k < len(t) and t[k] in lx.colours:
                colour, at["colour"], end = lx.colours[t[k]], k, k + 1
        p.mentions.append(Mention(shape, colour, size, count, at, j + 1, end))
        used = end - 1
    if len(p.mentions) == 1 and "number" in p.mentions[0].at and p.mentions[0].count == 1:
        p.counts.append((1, p.mentions[0].at["number"]))  # "a single red circle": one object in all


Symbol = tuple[str, str, tuple[int, ...]]


def _symbols(p: Parse, lx: Lexicon) -> list[Symbol]:
    """The caption as (kind, value, tokens): objects ("m", index), phrases, and "w" for the rest."""
    starts = {m.start: k for k, m in enumerate(p.mentions)}
    out, i = [], 0
    while i < len(p.tokens):
        if i in starts:
            m = p.mentions[starts[i]]
            out.append(("m", str(starts[i]), tuple(range(m.start, m.end))))
            i = m.end
            continue
        for n in range(lx.longest, 0, -1):
            kind_dir = lx.phrases.get(tuple(p.tokens[i: i + n])) if i + n <= len(p.tokens) else None
            if kind_dir:
                out.append((*kind_dir, tuple(range(i, i + n))))
                i += n
                break
        else:
            out.append(("w", p.tokens[i], (i,)))
            i += 1
    return out


def _find_claims(p: Parse, lx: Lexicon, s: list[Symbol]) -> None:
    def near(k: int, step: int) -> int | None:  # the object next to symbol k, past fillers
        k += step
        while 0 <= k < len(s) and (s[k][0] == "," or s[k][0] == "w" and s[k][1] in lx.fillers):
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
        if kind == "rel" and before is not None and after is None and lx.subject_first:
            group = run(k, -1)  # "a wa b to c no hidari ni": each of b, c is <direction> of the topic a
            topic = near(group[0], -1)
            for g in group if topic is not None else ():
                p.claims.append(Claim("rel", direction, (m(g), m(topic)), tokens))
        elif kind == "rel" and before is not None and after is not None:
            p.claims.append(Claim("rel", direction, (m(before), m(after)), tokens))
            more = after + 1  # "the a is left of the b and the c": a is left of c too
            while True:
                obj = more + 1
                while obj < len(s) and s[obj][0] == "w" and s[obj][1] in lx.skip_before_object:
                    obj += 1  # "... et DE la croix"
                if not (obj < len(s) and s[more][0] == "and" and s[obj][0] == "m" and
                        (obj + 1 >= len(s) or s[obj + 1][0] not in ("rel", "pos", "withrel", "line"))):
                    break
                p.claims.append(Claim("rel", direction, (m(before), m(obj)), tokens))
                more = obj + 1
        elif kind == "withrel" and before is not None:  # "b with a to its left"
            anchor = near(before - 1 if before > 0 and s[before - 1][0] in ("with", "and") else before, -1)
            if anchor is not None:
                p.claims.append(Claim("rel", direction, (m(before), m(anchor)), tokens))
        elif kind == "between" and before is not None:
            ends = run(k, 1)
            if len(ends) == 2:
                p.claims.append(Claim("between", "", (m(before), m(ends[0]), m(ends[1])), tokens))
        elif kind == "between_rev" and after is not None:  # "a to c no aida ni b"
            ends = run(k, -1)
            if len(ends) == 2:
                p.claims.append(Claim("between", "", (m(after), m(ends[0]), m(ends[1])), tokens))
        elif kind == "pos" and (before is not None or after is not None):
            p.claims.append(Claim("pos", direction, (m(before if before is not None else after),), tokens))
        elif kind == "order":
            ks = run(k, 1) if after is not None else run(k, -1)
            chain(ks, direction, tokens) if len(ks) >= 2 else p.claims.append(Claim("axis", direction, (), tokens))
        elif kind == "line":
            ks = run(k, -1)
            chain(ks, direction, tokens) if len(ks) >= 2 else p.claims.append(Claim("axis", direction, (), tokens))
