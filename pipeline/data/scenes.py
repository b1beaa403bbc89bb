"""The pipeline's default data set, generated: synthetic scenes of 1-3 coloured shapes
with visible spatial relations, each image with 5 different human-style captions in each
language of `scenes.languages` (the words and grammar: pipeline/data/scene_text/).

Everything is deterministic: image i depends only on (seed, i) and the config, so the
same config always yields byte-identical files and a longer run extends a shorter one.
English captions come from image i's own random stream, as before there were languages;
every other language has a stream of its own, so adding one changes no other captions.
A few "colour shape" combinations are held out of every ordinary image and appear only
in images marked split="novel", to measure generalisation to unseen combinations."""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.scene_text import captions, check_languages, language_seed

logger = logging.getLogger(__name__)

# Saturated, well separated colours an ImageNet CNN tells apart easily.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
    "yellow": (250, 230, 20), "purple": (140, 40, 180), "orange": (255, 140, 0),
    "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Muted background colours, each far (in RGB) from every object colour, so a shape
# never blends into its background and a caption's background word is never a shape colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "beige": (215, 200, 160), "pink": (230, 170, 185),
    "brown": (120, 85, 55), "teal": (40, 125, 125),
}
TEXTURES = ("solid", "gradient", "noise", "stripes")
# Object radius as a fraction of the image side: clearly different, and three large
# shapes still fit in one row at the default image size.
RADIUS = {"small": 0.10, "large": 0.17}
RENDER_CHUNK = 250  # images per job of a rendering process


@dataclass
class SceneConfig:
    n_images: int = 6000
    image_size: int = 160
    seed: int = 0
    max_objects: int = 3  # each image has 1..max_objects shapes (at most 3)
    # "colour shape" pairs that appear only in novel images.
    holdout: list[str] = field(default_factory=lambda: ["red triangle", "blue star", "yellow circle"])
    novel_fraction: float = 0.1  # share of images that contain a held-out pair
    size_mention: float = 0.5  # chance a caption names an object's size, as people often omit it
    # Caption languages (pipeline/data/scene_text): en, de, fr, es, ja; 5 captions each per image.
    languages: list[str] = field(default_factory=lambda: ["en"])


def validate(cfg: SceneConfig) -> None:
    if cfg.n_images < 1:
        raise ValueError(f"scenes.n_images must be >= 1, got {cfg.n_images}")
    if cfg.image_size < 64:
        raise ValueError(f"scenes.image_size must be >= 64 so three shapes fit, got {cfg.image_size}")
    if not 1 <= cfg.max_objects <= 3:
        raise ValueError(f"scenes.max_objects must be 1, 2 or 3, got {cfg.max_objects}")
    if not 0.0 <= cfg.novel_fraction <= 1.0 or not 0.0 <= cfg.size_mention <= 1.0:
        raise ValueError("scenes.novel_fraction and scenes.size_mention must lie in [0, 1]")
    for combo in cfg.holdout:
        parts = combo.split()
        if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
            raise ValueError(
                f"scenes.holdout entry {combo!r} is not 'colour shape'; "
                f"colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}"
            )
    if cfg.novel_fraction > 0 and not cfg.holdout:
        raise ValueError("scenes.holdout is empty but scenes.novel_fraction > 0; set novel_fraction: 0")
    if len(set(cfg.holdout)) > len(COLOURS) * len(SHAPES) - 3:
        raise ValueError("scenes.holdout leaves too few colour/shape pairs for ordinary images")
    check_languages(cfg.languages, "scenes.languages")


# ---------------------------------------------------------------------------- layout

def sample_scene(rng: np.random.Generator, cfg: SceneConfig, novel: bool) -> dict:
    """Objects (ordered along the relation axis), the axis and the background."""
    n = int(rng.integers(1, cfg.max_objects + 1))
    held = sorted(set(cfg.holdout))
    allowed = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in held]
    combos: list[str] = [held[int(rng.integers(len(held)))]] if novel else []
    pool = allowed + held if novel else allowed  # ordinary images never see held-out pairs
    while len(combos) < n:  # distinct pairs, so "the red circle" always names one object
        combo = pool[int(rng.integers(len(pool)))]
        if combo not in combos:
            combos.append(combo)
    rng.shuffle(combos)  # the held-out pair may land anywhere in the row
    sizes, axis, positions = _place(rng, n, cfg.image_size)
    objects = [
        {"shape": combo.split()[1], "colour": combo.split()[0], "size": size, "x": x, "y": y}
        for combo, size, (x, y) in zip(combos, sizes, positions)
    ]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    return {"objects": objects, "axis": axis, "background": background, "texture": texture}


def _place(rng: np.random.Generator, n: int, side: int) -> tuple[list[str], str, list[tuple[int, int]]]:
    """Non-overlapping centres in a row (axis "x") or a column (axis "y"), ordered along
    it. Neighbours are a full gap apart along the axis and nearly aligned across it, so
    "left of"/"above" is unambiguous to the eye as well as in the numbers."""
    margin, gap, wobble = 0.03 * side, 0.05 * side, 0.04 * side
    while True:  # redraw sizes until they fit with some room to spare (all-small always does)
        sizes = [("small", "large")[int(rng.integers(2))] for _ in range(n)]
        radii = [RADIUS[s] * side for s in sizes]
        slack = side - 2 * margin - 2 * sum(radii) - (n - 1) * gap
        if slack >= 0.1 * side:
            break
    # Split the spare room randomly between the n+1 spaces around the objects.
    spaces = rng.dirichlet(np.ones(n + 1)) * slack
    along, cursor = [], margin
    for i, r in enumerate(radii):
        cursor += spaces[i] + r
        along.append(cursor)
        cursor += r + gap
    rmax = max(radii)
    base = rng.uniform(rmax + margin, side - rmax - margin)
    across = [float(np.clip(base + rng.uniform(-wobble, wobble), r + margin, side - r - margin)) for r in radii]
    axis = "x" if n == 1 or rng.random() < 0.5 else "y"
    points = [(round(a), round(c)) if axis == "x" else (round(c), round(a)) for a, c in zip(along, across)]
    return sizes, axis, points


# ---------------------------------------------------------------------------- render

def _shape_polygon(shape: str) -> list[tuple[float, float]]:
    """Unit outline centred on (0, 0), radius 1, y pointing down (image coordinates)."""
    if shape == "triangle":  # shifted so its bounding box, not its apex, sits on the centre
        return [(0.0, -0.82), (0.95, 0.82), (-0.95, 0.82)]
    if shape == "star":
        return [((1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi * (k / 5 - 0.5)),
                 (1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi * (k / 5 - 0.5))) for k in range(10)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)]
    if shape == "cross":
        a, t = 0.9, 0.3
        return [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t),
                (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t)]
    raise ValueError(f"no outline for shape {shape!r}")


def _draw_object(img: Image.Image, obj: dict, radius: float, rgb: tuple[int, int, int]) -> None:
    # Drawn as a 4x supersampled mask and shrunk, for smooth photo-like edges.
    ss, half = 4, int(math.ceil(radius)) + 1
    mask = Image.new("L", (2 * half * ss, 2 * half * ss), 0)
    draw = ImageDraw.Draw(mask)
    c, r = half * ss, radius * ss
    if obj["shape"] == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif obj["shape"] == "square":
        draw.rectangle([c - 0.82 * r, c - 0.82 * r, c + 0.82 * r, c + 0.82 * r], fill=255)
    else:
        draw.polygon([(c + px * r, c + py * r) for px, py in _shape_polygon(obj["shape"])], fill=255)
    mask = mask.resize((2 * half, 2 * half), Image.Resampling.BOX)
    img.paste(rgb, (obj["x"] - half, obj["y"] - half), mask)


def _background(rng: np.random.Generator, scene: dict, side: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene["background"]], dtype=np.float32) + rng.uniform(-8, 8, 3)
    angle = rng.uniform(0, 2 * math.pi)
    coord = np.arange(side, dtype=np.float32) / side
    ramp = coord[None, :] * math.cos(angle) + coord[:, None] * math.sin(angle)  # along a random direction
    texture = scene["texture"]
    if texture == "gradient":  # same hue, darker to lighter
        shade = 0.8 + 0.35 * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    elif texture == "stripes":
        shade = 1.0 + 0.07 * np.sign(np.sin(2 * math.pi * ramp * rng.uniform(5, 12)))
    else:
        shade = np.ones_like(ramp)
    pixels = base * shade[..., None]
    if texture == "noise":
        pixels = pixels + rng.normal(0.0, 10.0, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render(rng: np.random.Generator, scene: dict, side: int) -> Image.Image:
    img = Image.fromarray(_background(rng, scene, side), "RGB")
    for obj in scene["objects"]:
        # Small per-object colour jitter, far below the distance between named colours.
        rgb = tuple(min(255, max(0, c + int(d))) for c, d in zip(COLOURS[obj["colour"]], rng.integers(-10, 11, 3)))
        _draw_object(img, obj, RADIUS[obj["size"]] * side, rgb)
    return img


# ---------------------------------------------------------------------------- data set

def _make_scene(cfg: SceneConfig, image_dir: Path, name: str, i: int) -> tuple[dict, dict[str, list[str]]]:
    """Render and save image i, write its captions: its record and its captions by language."""
    rng = np.random.default_rng([cfg.seed, i])
    novel = rng.random() < cfg.novel_fraction
    scene = sample_scene(rng, cfg, novel)
    render(rng, scene, cfg.image_size).save(image_dir / name, format="PNG", compress_level=1)
    texts = {}
    for language in cfg.languages:  # English goes on with the image's stream, as before languages existed
        stream = rng if language == "en" else np.random.default_rng([cfg.seed, i, language_seed(language)])
        texts[language] = captions(stream, scene, cfg.size_mention, language=language)
    return _record(f"images/{name}", texts, "novel" if novel else None, scene["objects"]), texts


def _make_chunk(cfg: SceneConfig, image_dir: Path, names: list[str], first: int) -> list[tuple[dict, dict]]:
    return [_make_scene(cfg, image_dir, name, first + j) for j, name in enumerate(names)]


def _scenes_in_order(cfg: SceneConfig, image_dir: Path, names: list[str], workers: int) -> Iterator[tuple[dict, dict]]:
    """Every image's (record, texts), in order. Image i depends only on (seed, i), so worker
    processes (one per core: ~2x faster on 2 cores) write byte-identical files."""
    chunk = RENDER_CHUNK
    starts = range(0, len(names), chunk)
    if workers <= 1 or len(names) <= chunk:
        for lo in starts:
            yield from _make_chunk(cfg, image_dir, names[lo: lo + chunk], lo)
        return
    # spawn, not fork: a spawned worker starts clean and imports only this module.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_make_chunk, cfg, image_dir, names[lo: lo + chunk], lo) for lo in starts]
        for job in jobs:
            yield from job.result()


def generate_scenes(out_dir: Path, cfg: SceneConfig, workers: int = 1) -> dict:
    """Write out_dir/images/scene_NNNNN.png and out_dir/captions.jsonl; return stats.
    workers: processes that render (0 = one per core); the files do not depend on it. The
    stage, a process of its own, asks for one per core; the default stays in this process,
    because forking a long-lived process that has run Ray (a test session) crashed it."""
    validate(cfg)
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(cfg.n_images - 1)))
    names = [f"scene_{i:0{width}d}.png" for i in range(cfg.n_images)]
    for stale in set(p.name for p in image_dir.glob("scene_*.png")) - set(names):
        (image_dir / stale).unlink()  # left by an earlier, larger run
    records, words, lengths, per_count = [], {}, {}, {}
    scenes = _scenes_in_order(cfg, image_dir, names, workers or os.cpu_count() or 1)
    for i, (record, texts) in enumerate(scenes):
        for language, texts_of_language in texts.items():
            for text in texts_of_language:
                tokens = caption_words(text)
                words.setdefault(language, set()).update(tokens)
                lengths.setdefault(language, []).append(len(tokens))
        records.append(record)
        per_count[len(record["objects"])] = per_count.get(len(record["objects"]), 0) + 1
        if (i + 1) % 500 == 0 or i + 1 == cfg.n_images:
            logger.info("scenes: %d/%d images", i + 1, cfg.n_images)
    tmp = out_dir / "captions.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out_dir / "captions.jsonl")  # readers never see a half-written file
    n_novel = sum(r["split"] == "novel" for r in records)
    stats = {
        "n_images": cfg.n_images, "n_novel": n_novel, "novel_share": n_novel / cfg.n_images,
        **_text_stats(set().union(*words.values()), [n for language in lengths for n in lengths[language]]),
        "objects_per_image": {str(k): per_count[k] for k in sorted(per_count)},
    }
    if cfg.languages != ["en"]:
        stats["languages"] = {language: _text_stats(words[language], lengths[language]) for language in cfg.languages}
    logger.info("scenes: %s", stats)
    return stats


def _record(image: str, texts: dict[str, list[str]], split: str | None, objects: list[dict]) -> dict:
    """A captions.jsonl line. "captions" holds the English captions, as it did before there
    were languages (so an English-only file is unchanged); the other languages' captions
    are under "captions_by_language", keyed by language code (pipeline/data/formats/jsonl.py)."""
    record: dict = {"image": image}
    if "en" in texts:
        record["captions"] = texts["en"]
    others = {language: text for language, text in texts.items() if language != "en"}
    if others:
        record["captions_by_language"] = others
    return {**record, "split": split, "objects": objects}


def caption_words(text: str) -> list[str]:
    """A caption's words for the statistics: split at spaces, or its characters for text
    written without spaces (Japanese), punctuation left out."""
    text = text.replace(",", " ").replace(":", " ")
    if " " in text.strip() or text.isascii():
        return text.split()
    return [c for c in text if c.isalnum()]


def _text_stats(words: set[str], lengths: list[int]) -> dict:
    return {"n_captions": len(lengths), "vocab_size": len(words),
            "mean_caption_words": sum(lengths) / len(lengths), "max_caption_words": max(lengths)}
