"""Grounded scene metric: hand-written captions whose answers are known, then the parser
proven on the generator itself (its reference captions are true of their scenes)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.scenes import SceneConfig, captions, sample_scene
from pipeline.data.vocab import tokenize
from pipeline.evaluation.grounded import aggregate, load_objects, parse, scene_axis, score_caption


def obj(colour: str, shape: str, x: int, y: int, size: str = "small") -> dict:
    return {"colour": colour, "shape": shape, "size": size, "x": x, "y": y}


ROW = [obj("red", "circle", 30, 80), obj("blue", "square", 120, 84, "large")]
# A column, top to bottom, with the x wobble the generator allows.
COLUMN = [obj("green", "star", 80, 20), obj("white", "cross", 74, 75, "large"), obj("black", "diamond", 86, 135)]
ROW3 = [obj("red", "circle", 20, 80), obj("blue", "square", 80, 76), obj("yellow", "triangle", 140, 83)]


def wrong(caption: str, objects: list[dict]) -> list[str]:
    return score_caption(caption, objects).wrong_words


def test_true_caption_of_a_row_is_fully_right():
    s = score_caption("a red circle to the left of a blue square", ROW)
    assert (s.named, s.named_correct, s.recalled, s.exact_set) == (2, 2, 2, True)
    assert (s.relations, s.relations_held) == (1, 1)
    assert s.object_precision == 1.0 and s.wrong == []


def test_swapped_colours_are_wrong_objects_and_a_false_relation():
    s = score_caption("a blue circle to the right of a red square", ROW)
    assert (s.named, s.named_correct, s.recalled, s.exact_set) == (2, 0, 0, False)
    assert (s.relations, s.relations_held) == (1, 0)
    # The shapes exist, so the colours are what is wrong; the relation does not hold.
    assert s.wrong_words == ["blue", "to", "the", "right", "of", "red"]


def test_reversed_relation_with_right_objects():
    s = score_caption("a red circle to the right of a blue square", ROW)
    assert s.object_precision == 1.0 and s.exact_set
    assert (s.relations, s.relations_held) == (1, 0)
    assert s.wrong_words == ["to", "the", "right", "of"]
    # "above" is the wrong axis for a row, even in the right order.
    assert score_caption("a red circle above a blue square", ROW).relations_held == 0
    assert score_caption("a blue square with a red circle to its left", ROW).relations_held == 1
    assert score_caption("a blue square with a red circle above it", ROW).relations_held == 0


def test_missing_and_invented_objects():
    s = score_caption("a red circle and a green star", ROW)
    assert (s.named, s.named_correct, s.recalled, s.exact_set) == (2, 1, 1, False)
    assert s.wrong_words == ["green", "star"]  # neither colour nor shape is in the image
    s = score_caption("a red circle", ROW)
    assert (s.object_precision, s.recalled, s.exact_set) == (1.0, 1, False)


def test_sizes_must_match_and_are_counted_apart():
    s = score_caption("a large red circle to the left of a large blue square", ROW)
    assert (s.sizes, s.sizes_correct) == (2, 1)
    assert (s.named_correct, s.recalled) == (1, 1)
    assert s.exact_set  # the set of colour-shape pairs is still the image's
    assert s.wrong_words == ["large"]
    s = score_caption("a small triangle that is red", [obj("red", "triangle", 80, 80)])
    assert (s.named_correct, s.sizes_correct, s.exact_set) == (1, 1, True)
    assert score_caption("a large triangle that is blue", [obj("red", "triangle", 80, 80)]).wrong_words == [
        "large", "blue"]


def test_counts():
    one = [obj("red", "circle", 80, 80)]
    assert (score_caption("a single red circle on a grey background", one).count_correct, ) == (1, )
    s = score_caption("a single red circle on a grey background", ROW)
    assert (s.count_claims, s.count_correct, s.wrong_words) == (1, 0, ["single"])
    s = score_caption("three shapes: a red circle, a blue square and a yellow triangle", ROW3)
    assert (s.count_claims, s.count_correct) == (1, 1)
    assert score_caption("two objects on a pink background, a blue square and a red circle", ROW3).count_correct == 0
    assert score_caption("a red circle to the left of a blue square", ROW).count_claims == 0
    # A plural names as many objects as its number; the generator never repeats a pair.
    s = score_caption("two red circles", ROW)
    assert (s.named, s.named_correct, s.wrong_words) == (2, 1, ["two"])


def test_three_object_relations():
    held = [
        "from left to right: a red circle, a blue square and a yellow triangle",
        "from left to right a red circle a blue square and a yellow triangle",  # as a model writes it
        "a red circle, a blue square and a yellow triangle in a row",
        "a blue square between a red circle and a yellow triangle",
        "a red circle to the left of a blue square, which is to the left of a yellow triangle",
        "a red circle on the left, a blue square in the middle and a yellow triangle on the right",
        "the red circle is to the left of the blue square and the yellow triangle",
        "three shapes on a grey background with a blue square in the middle",
        "there is a yellow triangle to the right of a blue square",
    ]
    for caption in held:
        s = score_caption(caption, ROW3)
        assert s.relations >= 1 and s.relations_held == s.relations and s.wrong == [], caption
    s = score_caption("from left to right: a blue square, a red circle and a yellow triangle", ROW3)
    assert (s.relations, s.relations_held) == (2, 1)  # square-circle wrong, circle-triangle right
    assert score_caption("a red circle between a blue square and a yellow triangle", ROW3).relations_held == 0
    assert score_caption("a red circle in the middle", ROW3).relations_held == 0
    assert score_caption("the red circle is to the left of the blue square and the yellow triangle",
                         ROW3).relations == 2
    s = score_caption("a red circle, a blue square and a yellow triangle in a column", ROW3)
    assert (s.relations, s.relations_held) == (2, 0)


def test_column_relations_use_y_despite_x_wobble():
    assert scene_axis(COLUMN) == "y" and scene_axis(ROW) == "x" and scene_axis(COLUMN[:1]) is None
    assert score_caption("from top to bottom: a green star, a white cross and a black diamond", COLUMN).wrong == []
    assert score_caption("a green star at the top and a black diamond at the bottom", COLUMN).wrong == []
    # x of the cross (74) is left of the star (80), but in a column that is no "left of" claim.
    s = score_caption("a white cross to the left of a green star", COLUMN)
    assert (s.relations, s.relations_held) == (1, 0)


def test_words_it_does_not_understand_are_ignored():
    s = score_caption("zebra <unk> quantum , , : red circle flibbertigibbet to the left of", ROW)
    assert (s.named, s.named_correct, s.relations) == (1, 1, 0)
    for caption in ("", "   ", "to the left of", "between and", "in a row", "a", "red", "from left to right"):
        score_caption(caption, ROW)  # must not raise
    assert score_caption("", ROW).object_precision is None
    assert parse("a red circle that is").mentions[0].colour == "red"


def test_an_object_listed_twice_is_a_repeat_but_one_named_again_in_a_relation_is_not():
    listed = "three shapes a small red circle a small red circle and a small yellow triangle"
    s = score_caption(listed, ROW3)
    assert s.repeated == 1 and s.wrong_words == ["red", "circle"]  # the second mention (three objects is right)
    assert s.named_correct == 3 and s.object_precision == 1.0  # precision cannot see it: the new figure can
    chained = "a red circle to the left of a blue square and the blue square to the left of a yellow triangle"
    assert score_caption(chained, ROW3).repeated == 0 and score_caption(chained, ROW3).wrong == []
    rate = aggregate([s, score_caption(chained, ROW3), score_caption("a red circle", ROW3)])["repeated_object_rate"]
    assert rate == pytest.approx(1 / 3)


def test_aggregate_is_micro_and_split_by_object_count():
    scores = [score_caption("a red circle to the left of a blue square", ROW),
              score_caption("a blue circle", ROW),
              score_caption("a green star", [obj("green", "star", 80, 80)])]
    block = aggregate(scores)
    assert block["object_precision"] == pytest.approx(3 / 4)
    assert block["object_recall"] == pytest.approx(3 / 5)
    assert block["exact_set"] == pytest.approx(2 / 3)
    assert block["relation_accuracy"] == 1.0 and block["count_accuracy"] is None
    assert set(block["by_objects"]) == {"1", "2"}
    assert block["by_objects"]["2"]["object_precision"] == pytest.approx(2 / 3)
    assert block["by_objects"]["1"]["n"] == 1


def test_load_objects():
    assert load_objects(None) is None and load_objects(float("nan")) is None and load_objects("[]") is None
    assert load_objects('[{"colour": "red"}]') == [{"colour": "red"}]


@pytest.fixture(scope="module")
def generated() -> list[tuple[list[dict], list[str]]]:
    """Scenes and captions from the generator's own functions (no images: fast)."""
    cfg, out = SceneConfig(), []
    for i in range(400):
        rng = np.random.default_rng([11, i])
        scene = sample_scene(rng, cfg, novel=rng.random() < 0.1)
        out.append((scene["objects"], captions(rng, scene, cfg.size_mention)))
    return out


@pytest.mark.parametrize("as_model_writes", [False, True])
def test_reference_captions_are_right_about_their_own_scenes(generated, as_model_writes):
    scores = [score_caption(" ".join(tokenize(c)) if as_model_writes else c, objects)
              for objects, texts in generated for c in texts]
    block = aggregate(scores)
    assert block["object_precision"] == 1.0
    assert block["relation_accuracy"] == 1.0
    assert block["count_accuracy"] == 1.0 and block["size_accuracy"] == 1.0
    assert all(s.wrong == [] for s in scores) and block["repeated_object_rate"] == 0.0
    assert sum(s.relations for s in scores) > len(generated)  # relations were found, not skipped
    by = block["by_objects"]
    assert by["1"]["exact_set"] == by["2"]["exact_set"] == 1.0 and by["2"]["object_recall"] == 1.0
    # Three-object templates that name one or two of them ("... with a B in the middle").
    assert 0.5 < by["3"]["exact_set"] < 0.9 and 0.7 < by["3"]["object_recall"] < 1.0


def test_reference_captions_of_other_scenes_score_low(generated):
    shifted = [score_caption(c, generated[(k + 1) % len(generated)][0])
               for k, (_, texts) in enumerate(generated) for c in texts]
    block = aggregate(shifted)
    assert block["object_precision"] < 0.15 and block["exact_set"] < 0.05
    mirrored = [score_caption(c, [dict(o, x=160 - o["x"], y=160 - o["y"]) for o in objects])
                for objects, texts in generated for c in texts]
    # Mirroring keeps objects but reverses every order; only "between"/"in the middle" survive.
    assert aggregate(mirrored)["object_precision"] == 1.0 and aggregate(mirrored)["relation_accuracy"] < 0.3
