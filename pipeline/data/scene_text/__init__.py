"""The words of the synthetic scenes' captions, one module per language (`scenes.languages`).

Every module turns the same language-neutral view of a scene (common.View: the objects in
order along the scene's axis, the background) into at least ten kinds of caption, each true
of the scene, in that language's own grammar and word order; `captions` draws k different
ones. The grounded metric reads them back with pipeline.evaluation.lexicons."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import de, en, es, fr, ja
from .common import View, choose, view

LANGUAGES = {"en": en, "de": de, "fr": fr, "es": es, "ja": ja}
NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "ja": "Japanese"}


def available() -> str:
    return ", ".join(f"{code} ({NAMES[code]})" for code in LANGUAGES)


def check_language(code: str, where: str = "language") -> None:
    if code not in LANGUAGES:
        raise ValueError(f"{where}: unknown language {code!r}; the scene captions exist in {available()}")


def check_languages(codes: Sequence[str], where: str = "scenes.languages") -> None:
    """A clear error for an empty list, a repeated or an unknown language code."""
    if isinstance(codes, str) or not codes:
        raise ValueError(f"{where} must be a non-empty list of language codes, e.g. [en]; available: {available()}")
    for code in codes:
        check_language(code, where)
    if len(set(codes)) < len(codes):
        raise ValueError(f"{where} names a language twice: {list(codes)}")


def language_seed(code: str) -> int:
    """A fixed number per language, so each language's captions of image i come from their own
    random stream (seed, i, language_seed) and adding a language changes no other language's."""
    return int.from_bytes(code.encode(), "big")


def captions(rng: np.random.Generator, scene: dict, size_mention: float = 0.5, k: int = 5,
             language: str = "en") -> list[str]:
    """k different captions of `scene` in `language`, all true of it, from varied templates."""
    check_language(language)
    return choose(rng, LANGUAGES[language].templates(view(rng, scene, size_mention)), k, scene)


__all__ = ["LANGUAGES", "NAMES", "View", "available", "captions", "check_language", "check_languages",
           "language_seed"]
