"""The grounded scene metric in every caption language: the parser agrees with the generator
on hundreds of scenes, and a wrong colour, shape or relation is caught in each language."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.scene_text import LANGUAGES, captions, language_seed
from pipeline.data.scenes import SceneConfig, sample_scene
from pipeline.data.vocab import tokenize
from pipeline.evaluation.grounded import aggregate, parse, score_caption
from pipeline.evaluation.lexicons import LEXICONS


def obj(colour: str, shape: str, x: int, y: int, size: str = "small") -> dict:
    return {"colour": colour, "shape": shape, "size": size, "x": x, "y": y}


ROW = [obj("red", "circle", 30, 80), obj("blue", "square", 120, 84, "large")]
# Per language: true of ROW; a wrong colour; a wrong shape; the relation reversed.
CASES = {
    "en": ("a red circle to the left of a large blue square", "a green circle to the left of a large blue square",
           "a red star to the left of a large blue square", "a red circle to the right of a large blue square"),
    "de": ("ein roter Kreis links von einem großen blauen Quadrat",
           "ein grüner Kreis links von einem großen blauen Quadrat",
           "ein roter Stern links von einem großen blauen Quadrat",
           "ein roter Kreis rechts von einem großen blauen Quadrat"),
    "fr": ("un cercle rouge à gauche d'un grand carré bleu", "un cercle vert à gauche d'un grand carré bleu",
           "une étoile rouge à gauche d'un grand carré bleu", "un cercle rouge à droite d'un grand carré bleu"),
    "es": ("un círculo rojo a la izquierda de un cuadrado azul grande",
           "un círculo verde a la izquierda de un cuadrado azul grande",
           "una estrella roja a la izquierda de un cuadrado azul grande",
           "un círculo rojo a la derecha de un cuadrado azul grande"),
    "ja": ("赤い丸は大きい青い四角の左にあります", "緑の丸は大きい青い四角の左にあります",
           "赤い星は大きい青い四角の左にあります", "赤い丸は大きい青い四角の右にあります"),
}


@pytest.fixture(scope="module")
def generated() -> dict[str, list[tuple[list[dict], list[str]]]]:
    """Per language: (objects, captions) of 300 scenes from the generator's own functions."""
    cfg, out = SceneConfig(), {language: [] for language in LANGUAGES}
    for i in range(300):
        rng = np.random.default_rng([21, i])
        scene = sample_scene(rng, cfg, novel=rng.random() < 0.1)
        for language in LANGUAGES:
            stream = np.random.default_rng([21, i, language_seed(language)])
            out[language].append((scene["objects"], captions(stream, scene, cfg.size_mention, language=language)))
    return out


def as_model_writes(caption: str, language: str) -> str:
    """What a decoder's output looks like: metric tokens joined by spaces (no punctuation);
    Japanese, which that tokenizer leaves whole, with a space between every character."""
    return " ".join(caption) if language == "ja" else " ".join(tokenize(caption))


@pytest.mark.parametrize("model_like", [False, True])
@pytest.mark.parametrize("language", list(LANGUAGES))
def test_generated_captions_are_right_about_their_own_scenes(generated, language, model_like):
    scores = [score_caption(as_model_writes(c, language) if model_like else c, objects, language)
              for objects, texts in generated[language] for c in texts]
    block = aggregate(scores)
    assert block["object_precision"] == 1.0 and block["relation_accuracy"] == 1.0
    assert block["count_accuracy"] == 1.0 and block["size_accuracy"] == 1.0
    assert all(s.wrong == [] for s in scores) and block["repeated_object_rate"] == 0.0  # chains name B twice
    n_scenes = len(generated[language])
    # Objects, relations, counts and sizes were found, not skipped.
    assert sum(s.relations for s in scores) > 4 * n_scenes
    assert sum(s.count_claims for s in scores) > n_scenes // 2 and sum(s.sizes for s in scores) > 3 * n_scenes
    by = block["by_objects"]
    assert by["1"]["exact_set"] == by["2"]["exact_set"] == 1.0 and by["2"]["object_recall"] == 1.0
    assert 0.5 < by["3"]["exact_set"] < 0.9  # templates that name one or two of three objects


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_mirrored_scenes_make_the_relations_false(generated, language):
    mirrored = [score_caption(c, [dict(o, x=160 - o["x"], y=160 - o["y"]) for o in objects], language)
                for objects, texts in generated[language] for c in texts]
    block = aggregate(mirrored)
    # Objects stay, every order reverses; only "between" and "in the middle" survive.
    assert block["object_precision"] == 1.0 and block["relation_accuracy"] < 0.3


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_captions_of_other_scenes_score_low(generated, language):
    pairs = generated[language]
    shifted = [score_caption(c, pairs[(k + 1) % len(pairs)][0], language)
               for k, (_, texts) in enumerate(pairs) for c in texts]
    assert aggregate(shifted)["object_precision"] < 0.15 and aggregate(shifted)["exact_set"] < 0.05


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_wrong_colour_wrong_shape_and_reversed_relation_are_caught(language):
    right, colour, shape, reversed_ = CASES[language]
    s = score_caption(right, ROW, language)
    assert (s.named, s.named_correct, s.exact_set, s.relations, s.relations_held) == (2, 2, True, 1, 1)
    assert (s.sizes, s.sizes_correct) == (1, 1)
    assert s.wrong == []
    for wrong in (colour, shape):
        s = score_caption(wrong, ROW, language)
        assert (s.named, s.named_correct, s.exact_set) == (2, 1, False), wrong
        assert (s.relations, s.relations_held) == (1, 0), wrong  # a missing object stands nowhere
        assert s.wrong, wrong
    s = score_caption(reversed_, ROW, language)
    assert (s.object_precision, s.relations, s.relations_held) == (1.0, 1, 0)
    if language != "ja":  # a Japanese caption without spaces is one word
        assert score_caption(colour, ROW, language).wrong_words[0] in {"green", "grüner", "vert", "verde"}
        assert score_caption(shape, ROW, language).wrong_words[0] in {"star", "Stern", "étoile", "estrella"}


def test_inflected_forms_are_read():
    de_ = parse("zwei rote Kreise und ein kleines grünes Dreieck", "de")
    assert [(m.shape, m.colour, m.size, m.count) for m in de_.mentions] == [
        ("circle", "red", None, 2), ("triangle", "green", "small", 1)]
    assert score_caption("zwei rote Kreise", ROW, "de").wrong_words == ["zwei"]
    assert [(m.colour, m.size) for m in parse("une petite étoile rouge et deux croix blanches", "fr").mentions] == [
        ("red", "small"), ("white", None)]
    assert [(m.colour, m.size) for m in parse("una estrella roja pequeña", "es").mentions] == [("red", "small")]
    assert [(m.shape, m.colour, m.size) for m in parse("小さな赤い円と大きな青い正方形", "ja").mentions] == [
        ("circle", "red", "small"), ("square", "blue", "large")]
    # Japanese tokens do not depend on where spaces fall.
    assert parse("赤い 丸は青 い四角の 左に", "ja").tokens == parse("赤い丸は青い四角の左に", "ja").tokens


def test_three_objects_in_each_language():
    row3 = [obj("red", "circle", 20, 80), obj("blue", "square", 80, 76), obj("yellow", "triangle", 140, 83)]
    held = {
        "de": "der rote Kreis ist links vom blauen Quadrat und vom gelben Dreieck",
        "fr": "le cercle rouge est à gauche du carré bleu et du triangle jaune",
        "es": "el círculo rojo está a la izquierda del cuadrado azul y del triángulo amarillo",
        "ja": "赤い丸は青い四角と黄色い三角の左にあります",
    }
    for language, caption in held.items():
        s = score_caption(caption, row3, language)
        assert (s.relations, s.relations_held, s.wrong) == (2, 2, []), (language, caption)
    s = score_caption("黄色い三角と青い四角の間に赤い丸があります", row3, "ja")  # the circle is not in between
    assert (s.relations, s.relations_held) == (1, 0)
    assert score_caption("赤い丸と黄色い三角の間に青い四角があります", row3, "ja").relations_held == 1


def test_unknown_language_is_an_error_naming_the_languages():
    with pytest.raises(ValueError, match=r"unknown language 'it'.*en \(English\).*ja \(Japanese\)"):
        score_caption("un cerchio rosso", ROW, "it")
    assert set(LEXICONS) == set(LANGUAGES)
