import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import images
from pipeline.data.images import ImageLoadError, collate_images, load_image_tensor, load_rgb, make_loader, read_ahead
from pipeline.encoders import Preprocess

PRE = Preprocess(size=32, resize=36, mean=(0.5,) * 3, std=(0.5,) * 3)


def noise_jpeg(path, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def make_bad(tmp_path, kind: str):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.touch()
    elif kind == "truncated_jpeg":
        data = noise_jpeg(tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_png":
        png = tmp_path / "full.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png)
        path = tmp_path / "truncated.png"
        path.write_bytes(png.read_bytes()[:-200])
    elif kind == "not_an_image":
        path.write_text("this is a caption, not a picture\n")
    elif kind == "broken_symlink":
        path.symlink_to(tmp_path / "gone.jpg")
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind,reason", [
    ("empty", "empty"), ("truncated_jpeg", "truncated"), ("truncated_png", "truncated"), ("not_an_image", "not an image"),
    ("broken_symlink", "broken symlink"), ("directory", "directory"), ("missing", "no such file"),
])
def test_bad_files_raise_image_load_error(tmp_path, kind, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_rgb(make_bad(tmp_path, kind))


def test_decompression_bomb_guard_becomes_image_load_error(tmp_path, monkeypatch):
    noise_jpeg(tmp_path / "big.jpg", size=(64, 64))
    # PIL raises (not just warns) above twice its limit; shrink the limit instead of making a huge file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_rgb(tmp_path / "big.jpg")


def test_permission_denied_is_image_load_error(tmp_path, monkeypatch):
    # Tests may run as root, where chmod 000 does not stop reading: simulate the OS refusal.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(ImageLoadError, match="permission denied"):
        load_rgb(noise_jpeg(tmp_path / "locked.jpg"))


def test_odd_modes_become_rgb_with_sensible_pixels(tmp_path):
    w, h = 40, 30
    # CMYK all zero ink = white paper.
    Image.new("CMYK", (w, h), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    # 16-bit grayscale: full scale must map to 255, not clip everything above 255 to white.
    gray16 = np.zeros((h, w), np.uint16)
    gray16[:, : w // 2] = 65535
    gray16[0, -1] = 128 * 257
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    # Palette with transparent index 0 (stored as black): must come out white.
    pal = Image.new("P", (w, h), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, w // 2, h))
    pal.save(tmp_path / "palette.png", transparency=0)
    Image.new("LA", (w, h), (0, 0)).save(tmp_path / "la.png")  # black, fully transparent
    Image.new("RGBA", (w, h), (255, 0, 0, 128)).save(tmp_path / "rgba.png")  # half-transparent red
    Image.new("L", (w, h), 77).save(tmp_path / "gray.png")
    Image.new("1", (w, h), 1).save(tmp_path / "bilevel.png")

    out = {p.stem: load_rgb(p) for p in tmp_path.iterdir()}
    for name, image in out.items():
        assert image.mode == "RGB" and image.size == (w, h), name
    px = {name: np.asarray(image).astype(int) for name, image in out.items()}
    assert px["cmyk"].min() > 240
    assert (px["gray16"][:, 0] == 255).all() and (px["gray16"][:, w // 2] == 0).all()
    assert tuple(px["gray16"][0, -1]) == (128, 128, 128)
    assert tuple(px["palette"][0, 0]) == (255, 0, 0) and tuple(px["palette"][0, -1]) == (255, 255, 255)
    assert (px["la"] == 255).all()
    assert tuple(px["rgba"][0, 0]) in {(255, 127, 127), (255, 128, 128)}  # red over white at 50 %
    assert (px["gray"] == 77).all() and (px["bilevel"] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:10, :10] = (255, 0, 0)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_rgb(tmp_path / "rotated.jpg")
    assert image.size == (20, 40) and image.info["original_size"] == (20, 40)
    top_right = np.asarray(image)[2, -3]  # clockwise turn moves top-left to top-right
    assert top_right[0] > 200 and top_right[1] < 60


def test_jpeg_draft_decodes_smaller_but_not_below_draft_size(tmp_path):
    noise_jpeg(tmp_path / "big.jpg", size=(1600, 1200))
    image = load_rgb(tmp_path / "big.jpg", draft_size=256)
    assert min(image.size) >= 256 and image.size[0] < 1600
    assert image.info["original_size"] == (1600, 1200)
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1200)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_passes_failures_through_and_keeps_order(tmp_path, num_workers):
    paths = [noise_jpeg(tmp_path / f"ok{i}.jpg", size=(40 + i, 30), seed=i) for i in range(5)]
    paths.insert(1, make_bad(tmp_path, "empty"))
    paths.insert(4, make_bad(tmp_path, "not_an_image"))
    batches = list(make_loader(paths, PRE, batch_size=3, num_workers=num_workers))
    indices = [i for b in batches for i in b.indices]
    failures = dict(f for b in batches for f in b.failures)
    assert indices == [0, 2, 3, 5, 6] and set(failures) == {1, 4}
    assert "empty" in failures[1] and "not an image" in failures[4]
    sizes = [s for b in batches for s in b.sizes]
    assert sizes == [(40, 30), (41, 30), (42, 30), (43, 30), (44, 30)]
    stacked = torch.cat([b.images for b in batches if b.images is not None])
    assert stacked.shape == (5, 3, 32, 32)
    torch.testing.assert_close(stacked[2], load_image_tensor(paths[3], PRE)[0])


def test_collate_of_only_failures_has_no_tensor():
    batch = collate_images([(0, None, "empty file", None), (1, None, "no such file", None)])
    assert batch.images is None and batch.indices == [] and batch.failures == [(0, "empty file"), (1, "no such file")]


def test_read_ahead_keeps_order_runs_one_item_ahead_and_passes_errors_on():
    threads, started = set(), []

    def work(i):
        threads.add(threading.current_thread().name)
        started.append(i)
        if i == 5:
            raise RuntimeError("item 5 failed")
        return i * i

    got = []
    with pytest.raises(RuntimeError, match="item 5 failed"):
        for value in read_ahead(range(10), work):
            got.append(value)
            assert len(started) <= len(got) + 1  # never more than one item ahead of the caller
    assert got == [0, 1, 4, 9, 16]
    assert threads == {"read-ahead_0"}  # the work ran beside the caller, not in it
    assert list(read_ahead(iter(["a", "b"]))) == ["a", "b"] and list(read_ahead([])) == []
