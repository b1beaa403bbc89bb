"""The generated default data set: deterministic, truthful captions, held-out pairs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.data.scenes import SceneConfig, generate_scenes

# The test's own idea of what each colour word looks like (deliberately not the
# generator's palette), so a drawn shape must look like the colour its caption names.
REFERENCE_RGB = {
    "red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "purple": (128, 0, 128), "orange": (255, 165, 0), "white": (255, 255, 255), "black": (0, 0, 0),
}
COLOUR = "|".join(REFERENCE_RGB)
SHAPE = "circle|square|triangle|star|diamond|cross"
NP = rf"(?:a|an|the) (?:(?:small|large) )?(?:{COLOUR}) (?:{SHAPE})"
NP_PARTS = re.compile(rf"\b(?:a|an|the) (?:(small|large) )?({COLOUR}) ({SHAPE})\b")
RELATION = re.compile(rf"({NP}) (?:is )?(to the left of|to the right of|above|below) ({NP})")
BETWEEN = re.compile(rf"({NP}) between ({NP}) and ({NP})")
ORDERED = re.compile(rf"from (left to right|top to bottom): ({NP}), ({NP}) and ({NP})")


def load(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "captions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    out = tmp_path_factory.mktemp("scenes")
    stats = generate_scenes(out, SceneConfig(n_images=300, seed=1))
    return out, load(out), stats


def find(record: dict, noun_phrase: str) -> dict:
    size, colour, shape = NP_PARTS.fullmatch(noun_phrase).groups()
    matches = [o for o in record["objects"] if (o["colour"], o["shape"]) == (colour, shape)]
    assert len(matches) == 1, f"{noun_phrase!r} names {len(matches)} objects in {record}"
    assert size in (None, matches[0]["size"]), f"{noun_phrase!r} has the wrong size in {record}"
    return matches[0]


def test_same_config_gives_identical_bytes_and_other_seed_differs(tmp_path):
    cfg = SceneConfig(n_images=40, seed=3)
    generate_scenes(tmp_path / "a", cfg)
    generate_scenes(tmp_path / "b", cfg)
    generate_scenes(tmp_path / "c", SceneConfig(n_images=40, seed=4))
    jsonl = [(tmp_path / d / "captions.jsonl").read_bytes() for d in "abc"]
    image = [(tmp_path / d / "images" / "scene_00017.png").read_bytes() for d in "abc"]
    assert jsonl[0] == jsonl[1] and image[0] == image[1]
    assert jsonl[0] != jsonl[2] and image[0] != image[2]


def test_rendering_jobs_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
    """40 images in 6 jobs of 7 on 2 workers. Threads stand in for the stage's processes: any
    fork from this test process, once the Ray tests have run in it, crashed it in CI (the stage
    itself is a fresh process; README: Performance)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.data import scenes
    monkeypatch.setattr(scenes, "RENDER_CHUNK", 7)
    monkeypatch.setattr(scenes, "ProcessPoolExecutor", lambda max_workers, mp_context: ThreadPoolExecutor(max_workers))
    cfg = SceneConfig(n_images=40, seed=5, languages=["en", "de"])
    one = generate_scenes(tmp_path / "one", cfg)
    two = generate_scenes(tmp_path / "two", cfg, workers=2)
    assert one == two
    assert (tmp_path / "one/captions.jsonl").read_bytes() == (tmp_path / "two/captions.jsonl").read_bytes()
    names = sorted(p.name for p in (tmp_path / "one/images").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two/images").iterdir()) and len(names) == 40
    for name in names:
        assert (tmp_path / "one/images" / name).read_bytes() == (tmp_path / "two/images" / name).read_bytes(), name


def test_shorter_run_is_a_prefix_and_stale_images_are_removed(tmp_path):
    generate_scenes(tmp_path, SceneConfig(n_images=40))
    long_lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    generate_scenes(tmp_path, SceneConfig(n_images=20))
    assert (tmp_path / "captions.jsonl").read_text().splitlines() == long_lines[:20]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"scene_{i:05d}.png" for i in range(20)]


def test_records_images_and_captions_are_well_formed(dataset):
    out, records, stats = dataset
    assert len(records) == stats["n_images"] == 300
    assert not (out / "captions.jsonl.tmp").exists()
    assert {len(r["objects"]) for r in records} == {1, 2, 3}
    for r in records[:40]:
        with Image.open(out / r["image"]) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (160, 160))
    for r in records:
        assert len(r["captions"]) == 5 and len(set(r["captions"])) == 5, r["captions"]
        assert all(3 <= len(c.split()) <= 20 for c in r["captions"]), r["captions"]
        assert r["split"] in ("novel", None)
        combos = [(o["colour"], o["shape"]) for o in r["objects"]]
        assert len(set(combos)) == len(combos), "a colour/shape pair repeats within one image"
    words = {w for r in records for c in r["captions"] for w in c.replace(",", " ").replace(":", " ").split()}
    assert stats["vocab_size"] == len(words)


def test_held_out_pairs_only_in_novel_images(dataset):
    _, records, stats = dataset
    held = set(SceneConfig().holdout)
    for r in records:
        has_held = any(f"{o['colour']} {o['shape']}" in held for o in r["objects"])
        assert has_held == (r["split"] == "novel"), r
        if r["split"] is None:  # not even named in a caption of an ordinary image
            assert not any(pair in c for pair in held for c in r["captions"])
    assert stats["n_novel"] == sum(r["split"] == "novel" for r in records)
    assert 0.05 <= stats["n_novel"] / len(records) <= 0.16


def test_custom_holdout_and_share_from_params(tmp_path):
    cfg = build(SceneConfig, {"n_images": "120", "holdout": ["green circle"], "novel_fraction": 0.5}, "scenes")
    generate_scenes(tmp_path, cfg)
    records = load(tmp_path)
    assert 0.35 <= sum(r["split"] == "novel" for r in records) / len(records) <= 0.65
    for r in records:
        has_green_circle = any((o["colour"], o["shape"]) == ("green", "circle") for o in r["objects"])
        assert has_green_circle == (r["split"] == "novel"), r


def test_captions_name_exactly_the_objects_drawn(dataset):
    _, records, _ = dataset
    for r in records:
        mentioned = set()
        for caption in r["captions"]:
            for m in NP_PARTS.finditer(caption):
                mentioned.add(id(find(r, m.group(0))))
            for size, shape, colour in re.findall(rf"(small|large) ({SHAPE}) that is ({COLOUR})", caption):
                assert [(o["size"], o["shape"], o["colour"]) for o in r["objects"]] == [(size, shape, colour)]
                mentioned.add(id(r["objects"][0]))
        assert mentioned == {id(o) for o in r["objects"]}, f"some object is never mentioned: {r}"


def test_pixels_show_the_named_colour_and_size(dataset):
    out, records, _ = dataset
    refs = np.array(list(REFERENCE_RGB.values()), dtype=float)
    area = {"small": [], "large": []}
    for r in records[:60]:
        pixels = np.asarray(Image.open(out / r["image"]).convert("RGB"), dtype=float)
        nearest = np.linalg.norm(pixels[..., None, :] - refs, axis=-1).argmin(-1)
        for o in r["objects"]:
            name = list(REFERENCE_RGB)[nearest[o["y"], o["x"]]]
            assert name == o["colour"], f"centre of {o} looks {name} in {r['image']}"
            # Pixels near the centre's colour in a window around the object: its visible area.
            window = pixels[max(0, o["y"] - 26): o["y"] + 27, max(0, o["x"] - 26): o["x"] + 27]
            area[o["size"]].append((np.linalg.norm(window - pixels[o["y"], o["x"]], axis=-1) < 40).sum())
    assert np.mean(area["large"]) > 2.5 * np.mean(area["small"])


def test_relation_words_agree_with_positions(dataset):
    _, records, _ = dataset
    checked = 0
    for r in records:
        for caption in r["captions"]:
            for first, relation, second in RELATION.findall(caption):
                a, b = find(r, first), find(r, second)
                dx, dy = b["x"] - a["x"], b["y"] - a["y"]  # from a to b, image y points down
                expected = {"to the left of": dx > 0, "to the right of": dx < 0, "above": dy > 0, "below": dy < 0}
                along, across = (abs(dx), abs(dy)) if "of" in relation else (abs(dy), abs(dx))
                assert expected[relation] and along > 1.5 * across, f"{caption!r} vs {r['objects']}"
                checked += 1
            for middle, end1, end2 in BETWEEN.findall(caption):
                m, e1, e2 = find(r, middle), find(r, end1), find(r, end2)
                key = "x" if abs(e1["x"] - e2["x"]) > abs(e1["y"] - e2["y"]) else "y"
                assert min(e1[key], e2[key]) < m[key] < max(e1[key], e2[key]), caption
                checked += 1
            for direction, *phrases in ORDERED.findall(caption):
                key = "x" if direction == "left to right" else "y"
                coords = [find(r, p)[key] for p in phrases]
                assert coords == sorted(coords) and len(set(coords)) == 3, caption
                checked += 1
    assert checked > 200  # the patterns really matched captions


@pytest.mark.parametrize("bad, message", [
    ({"holdout": ["pink triangle"]}, "colour shape"),
    ({"max_objects": 4}, "max_objects"),
    ({"holdout": [], "novel_fraction": 0.1}, "novel_fraction"),
    ({"image_size": 32}, "image_size"),
])
def test_bad_config_is_rejected_with_a_hint(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        generate_scenes(tmp_path, SceneConfig(**{"n_images": 5, **bad}))
