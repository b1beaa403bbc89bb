"""English captions: "a small red circle to the left of a blue square", "two shapes: ...".
These are the data set's original templates; their wording and the order in which they
draw from the random generator must not change, or every English caption of a seed would."""
from __future__ import annotations

from .common import Template, View


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def templates(v: View) -> list[Template]:
    objs, bg = v.objects, v.background

    def noun(o: dict) -> str:  # "small red circle" or "red circle"
        return f"{o['size']} {o['colour']} {o['shape']}" if v.sized() else f"{o['colour']} {o['shape']}"

    def a(o: dict) -> str:
        return _a(noun(o))

    def plain(o: dict) -> str:  # sizeless, for the long three-object templates (<= ~20 words)
        return _a(f"{o['colour']} {o['shape']}")

    on_bg = f"on {_a(bg)} background"
    if len(objs) == 1:
        o = objs[0]
        return [
            lambda: a(o), lambda: f"{a(o)} {on_bg}", lambda: f"a picture of {a(o)}",
            lambda: f"there is {a(o)} in the image", lambda: f"a single {noun(o)} {on_bg}",
            lambda: f"an image showing one {noun(o)}", lambda: f"{_a(o['size'])} {o['shape']} that is {o['colour']}",
            lambda: f"one {noun(o)} against {_a(bg)} background", lambda: f"{_a(bg)} background with {a(o)}",
            lambda: f"the image contains {a(o)}",
        ]
    horizontal = v.horizontal
    fw, bw = ("to the left of", "to the right of") if horizontal else ("above", "below")
    first_side, last_side = ("on the left", "on the right") if horizontal else ("at the top", "at the bottom")
    near_side = "to its left" if horizontal else "above it"
    A, B = objs[0], objs[1]
    if len(objs) == 2:
        return [
            lambda: f"{a(A)} {fw} {a(B)}", lambda: f"there is {a(B)} {bw} {a(A)}",
            lambda: f"two shapes: {a(A)} and {a(B)}", lambda: f"{a(A)} and {a(B)} {on_bg}",
            lambda: f"{a(A)} {first_side} and {a(B)} {last_side}", lambda: f"a picture of {a(B)} {bw} {a(A)}",
            lambda: f"the {noun(A)} is {fw} the {noun(B)}", lambda: f"{a(A)} {fw} {a(B)} {on_bg}",
            lambda: f"two objects {on_bg}, {a(B)} and {a(A)}", lambda: f"{a(B)} with {a(A)} {near_side}",
        ]
    C = objs[2]
    order = "from left to right" if horizontal else "from top to bottom"
    line = "in a row" if horizontal else "in a column"
    return [
        lambda: f"three shapes: {a(A)}, {a(B)} and {a(C)}", lambda: f"{order}: {a(A)}, {a(B)} and {a(C)}",
        lambda: f"{a(A)}, {a(B)} and {a(C)} {line}", lambda: f"{a(B)} between {a(A)} and {a(C)}",
        lambda: f"{plain(A)} {fw} {plain(B)}, which is {fw} {plain(C)}",
        lambda: f"three shapes {on_bg} with {a(B)} in the middle", lambda: f"there is {a(C)} {bw} {a(B)}",
        lambda: f"{plain(A)} {first_side}, {plain(B)} in the middle and {plain(C)} {last_side}",
        lambda: f"the {noun(A)} is {fw} the {noun(B)} and the {noun(C)}",
        lambda: f"a picture of three shapes, {a(C)} {last_side}",
    ]
