"""What every language's captions share: the scene as a caption sees it (which object comes
first along which axis, which relations hold) and how 5 different captions are drawn from
a language's templates. A language module only says how to put that into words."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Directions, named as in English; objects[0] is always the first along the scene's axis,
# so it is FORWARD of objects[1], which is BACKWARD of it.
FORWARD = {"x": "left", "y": "above"}
BACKWARD = {"x": "right", "y": "below"}

Template = Callable[[], str]


@dataclass
class View:
    """A scene as a caption template reads it. `sized()` draws whether the next noun phrase
    names the object's size (people often omit it), so templates must call it in the order
    they build the caption: the draws are part of what makes a caption reproducible."""

    rng: np.random.Generator
    objects: list[dict]
    background: str
    axis: str  # "x": a row, objects[0] leftmost; "y": a column, objects[0] on top
    size_mention: float

    @property
    def horizontal(self) -> bool:
        return self.axis == "x"

    @property
    def forward(self) -> str:  # objects[i] is `forward` of objects[i + 1]
        return FORWARD[self.axis]

    @property
    def backward(self) -> str:
        return BACKWARD[self.axis]

    def sized(self) -> bool:
        return bool(self.rng.random() < self.size_mention)


def view(rng: np.random.Generator, scene: dict, size_mention: float) -> View:
    return View(rng, scene["objects"], scene["background"], scene["axis"], size_mention)


def choose(rng: np.random.Generator, templates: list[Template], k: int, scene: dict) -> list[str]:
    """k different captions from templates taken in a random order."""
    chosen: list[str] = []
    for i in rng.permutation(len(templates)):
        text = templates[int(i)]()
        if text not in chosen:
            chosen.append(text)
        if len(chosen) == k:
            return chosen
    raise AssertionError(f"only {len(chosen)} distinct captions for {scene}")  # templates differ in wording
