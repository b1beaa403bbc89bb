import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.encoders import Encoder, EncoderConfig, Preprocess
from pipeline.encoders import runtimes
from pipeline.feature_table import load_features
from pipeline.features import FeaturesConfig, extract_features

LITE = EncoderConfig("efficientnet_lite0", "none")  # random init, seeded: fast and deterministic
# torch runtime: the cache tests count the images that go through the torch network.
CFG = FeaturesConfig(batch_size=4, num_workers=0, device="cpu", runtime="torch")


def photo(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.fixture
def items(tmp_path):
    (tmp_path / "img").mkdir()
    return [(f"im{i}", photo(tmp_path / "img" / f"{i}.jpg", i)) for i in range(8)]


@pytest.fixture
def forward_count(monkeypatch):
    """Images that really went through the network, counted independently of the stats."""
    seen = []
    original = Encoder.forward_grid

    def counting(self, x):
        seen.append(x.shape[0])
        return original(self, x)
    monkeypatch.setattr(Encoder, "forward_grid", counting)
    return seen


def run(tmp_path, items, encoder=LITE, cfg=CFG, name="features"):
    return extract_features(items, encoder, cfg, tmp_path / f"{name}.parquet", tmp_path / f"{name}_errors.json")


def test_incremental_run_encodes_only_new_and_changed_images(tmp_path, items, forward_count):
    first = run(tmp_path, items[:4])
    assert (first["n_encoded"], first["n_reused"], sum(forward_count)) == (4, 0, 4)
    before = load_features(tmp_path / "features.parquet")

    forward_count.clear()
    second = run(tmp_path, items[:6])
    assert (second["n_encoded"], second["n_reused"], second["n_failed"], sum(forward_count)) == (2, 4, 0, 2)
    after = load_features(tmp_path / "features.parquet")
    assert sorted(after.ids) == [f"im{i}" for i in range(6)]
    ids = [f"im{i}" for i in range(4)]
    np.testing.assert_array_equal(after.lookup(ids), before.lookup(ids))  # reused rows are the old rows

    # The incremental result equals a from-scratch run, row for row.
    fresh = run(tmp_path, items[:6], name="fresh")
    assert fresh["n_encoded"] == 6
    all_ids = [i for i, _ in items[:6]]
    np.testing.assert_allclose(load_features(tmp_path / "fresh.parquet").lookup(all_ids), after.lookup(all_ids),
                               atol=1e-3)

    # Same id, new content: that image (only) is re-encoded.
    photo(items[0][1], seed=99)
    forward_count.clear()
    third = run(tmp_path, items[:6])
    assert (third["n_encoded"], third["n_reused"], sum(forward_count)) == (1, 5, 1)
    assert not np.allclose(load_features(tmp_path / "features.parquet").lookup(["im0"]), before.lookup(["im0"]))


def test_changed_encoder_reencodes_everything(tmp_path, items, forward_count):
    run(tmp_path, items[:4])
    forward_count.clear()
    stats = run(tmp_path, items[:4], encoder=EncoderConfig("efficientnet_lite0", "pretrained"))
    assert (stats["n_encoded"], stats["n_reused"], sum(forward_count)) == (4, 0, 4)
    table = load_features(tmp_path / "features.parquet")
    assert table.meta["weights"] == "pretrained" and table.meta["name"] == "efficientnet_lite0"


def test_bad_images_go_to_errors_file_and_the_rest_is_written(tmp_path, items):
    empty, cut, text = tmp_path / "empty.jpg", tmp_path / "cut.jpg", tmp_path / "text.jpg"
    empty.touch()
    cut.write_bytes(items[0][1].read_bytes()[:300])
    text.write_text("not a picture")
    bad = [("empty", empty), ("cut", cut), ("text", text)]
    cfg = FeaturesConfig(batch_size=2, num_workers=2, device="cpu")  # failures cross worker processes
    stats = run(tmp_path, items[:3] + bad, cfg=cfg)
    assert (stats["n_total"], stats["n_encoded"], stats["n_failed"]) == (6, 3, 3)
    errors = json.loads((tmp_path / "features_errors.json").read_text())
    assert {e["image_id"]: e["path"] for e in errors} == {i: str(p) for i, p in bad}
    assert all(e["error"] for e in errors)
    table = load_features(tmp_path / "features.parquet")
    assert sorted(table.ids) == ["im0", "im1", "im2"]
    with pytest.raises(KeyError, match="cut"):
        table.lookup(["im0", "cut"])


def test_grid_column_and_metadata(tmp_path, items):
    cfg = FeaturesConfig(batch_size=4, num_workers=0, device="cpu", spatial="head")
    run(tmp_path, items[:3], cfg=cfg)
    table = load_features(tmp_path / "features.parquet", grid=True)
    assert table.features.shape == (3, 1280) and table.features.dtype == np.float32
    assert table.grid.shape == (3, 1280, 7, 7)  # 224 px input, stride 32
    # pooled = mean of the grid (both stored in float16, hence the tolerance)
    np.testing.assert_allclose(table.grid.astype(np.float32).mean(axis=(2, 3)), table.features, atol=2e-2)
    schema = pq.read_schema(tmp_path / "features.parquet")
    assert str(schema.field("feature").type) == "fixed_size_list<element: halffloat>[1280]"
    assert table.meta["feature_dim"] == 1280 and table.meta["grid_shape"] == [1280, 7, 7]
    assert Preprocess.from_dict(table.meta["preprocess"]).size == 224
    order = ["im2", "im0"]
    np.testing.assert_array_equal(table.lookup(order), table.features[[table.ids.index(i) for i in order]])
    np.testing.assert_array_equal(table.lookup(order, spatial=True), table.grid[[table.ids.index(i) for i in order]])


def test_maps_are_raw_float16_and_files_with_list_maps_still_load_and_reuse(tmp_path, items):
    import pyarrow as pa
    cfg = FeaturesConfig(batch_size=4, num_workers=0, device="cpu", runtime="torch", spatial="s32")
    run(tmp_path, items[:4], cfg=cfg)
    path = tmp_path / "features.parquet"
    new = load_features(path, grid=True)
    table = pq.read_table(path)
    assert pa.types.is_fixed_size_binary(table.schema.field("grid").type)
    raw = np.frombuffer(table.column("grid").chunk(0)[1].as_py(), "<f2")  # any reader can decode a row
    np.testing.assert_array_equal(raw.reshape(new.grid.shape[1:]), new.grid[1])
    # A file written before the maps were binary: the same maps as fixed-size lists of float16.
    maps = pa.FixedSizeListArray.from_arrays(pa.array(new.grid.reshape(-1), pa.float16()), new.grid[0].size)
    old = table.set_column(table.schema.get_field_index("grid"), "grid", maps)
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), path)
    np.testing.assert_array_equal(load_features(path, grid=True).grid, new.grid)
    stats = run(tmp_path, items[:6], cfg=cfg)
    assert (stats["n_reused"], stats["n_encoded"]) == (4, 2)
    again = load_features(path, grid=True)
    assert pa.types.is_fixed_size_binary(pq.read_schema(path).field("grid").type)
    np.testing.assert_array_equal(again.lookup([f"im{i}" for i in range(4)], spatial=True), new.grid)


@pytest.mark.parametrize("level, shape", [("s16", [112, 14, 14]), ("s32", [320, 7, 7]), ("s16+s32", [432, 7, 7])])
def test_spatial_levels_of_lite0(tmp_path, items, level, shape):
    run(tmp_path, items[:2], cfg=FeaturesConfig(batch_size=2, num_workers=0, device="cpu", spatial=level))
    table = load_features(tmp_path / "features.parquet", grid=True)
    assert table.meta["grid_shape"] == shape and table.meta["spatial"] == level
    assert table.grid.shape == (2, *shape) and table.grid.dtype == np.float16
    assert np.isfinite(table.grid).all() and table.grid.astype(np.float32).std() > 0
    # the pooled head vector is stored as before, whatever the spatial level
    plain = run(tmp_path, items[:2], name="plain")
    assert plain["n_encoded"] == 2
    np.testing.assert_array_equal(load_features(tmp_path / "plain.parquet").features, table.features)


def test_spatial_map_missing_is_a_clear_error(tmp_path, items):
    run(tmp_path, items[:1])
    with pytest.raises(ValueError, match="features.spatial"):
        load_features(tmp_path / "features.parquet", grid=True)
    with pytest.raises(ValueError, match="features.spatial"):
        FeaturesConfig(spatial="block7")


def test_other_precision_or_code_version_reencodes(tmp_path, items, forward_count, monkeypatch):
    """Issue 11, defect 2: an fp32 cache must not be reused for a bf16 run (nor after the
    feature code changes); the identity of what made the rows is in the file's metadata."""
    run(tmp_path, items[:3])
    forward_count.clear()
    bf16 = run(tmp_path, items[:3], cfg=FeaturesConfig(batch_size=4, num_workers=0, device="cpu", precision="bf16"))
    assert (bf16["n_encoded"], bf16["n_reused"], sum(forward_count)) == (3, 0, 3)
    meta = load_features(tmp_path / "features.parquet").meta
    assert (meta["precision"], meta["device_type"]) == ("bf16", "cpu")
    again = run(tmp_path, items[:3], cfg=FeaturesConfig(batch_size=4, num_workers=0, device="cpu", precision="bf16"))
    assert (again["n_encoded"], again["n_reused"]) == (0, 3)
    monkeypatch.setattr("pipeline.features.FEATURES_CODE_VERSION", 999)
    bumped = run(tmp_path, items[:3], cfg=FeaturesConfig(batch_size=4, num_workers=0, device="cpu", precision="bf16"))
    assert (bumped["n_encoded"], bumped["n_reused"]) == (3, 0)


def test_identical_images_do_not_multiply_rows(tmp_path, items):
    """Issue 11, defect 5: two byte-identical files used to grow 3 -> 5 -> 9 -> 17 rows."""
    twin = tmp_path / "img" / "twin.jpg"
    twin.write_bytes(items[0][1].read_bytes())
    batch = items[:2] + [("twin", twin)]
    for _ in range(4):
        stats = run(tmp_path, batch)
        table = load_features(tmp_path / "features.parquet")
        assert sorted(table.ids) == ["im0", "im1", "twin"] and stats["n_rows"] == 3
    np.testing.assert_array_equal(table.lookup(["twin"]), table.lookup(["im0"]))


def test_duplicate_ids_and_bad_config_are_refused(tmp_path, items):
    with pytest.raises(ValueError, match="duplicate image ids.*im0"):
        run(tmp_path, [items[0], ("im0", items[1][1])])
    with pytest.raises(ValueError, match="precision"):
        FeaturesConfig(precision="fp8")
    with pytest.raises(FileNotFoundError, match="features stage"):
        load_features(tmp_path / "nothing.parquet")


def test_damaged_previous_output_is_rebuilt_not_fatal(tmp_path, items):
    (tmp_path / "features.parquet").write_bytes(b"PAR1 half a file")
    stats = run(tmp_path, items[:2])
    assert (stats["n_encoded"], stats["n_reused"]) == (2, 0)
    assert sorted(load_features(tmp_path / "features.parquet").ids) == ["im0", "im1"]


@pytest.mark.parametrize("runtime", runtimes.EXPORTED)
def test_exported_runtime_features_match_torch_and_are_their_own_cache(tmp_path, items, runtime):
    if not runtimes.installed(runtime):
        pytest.skip(f"{runtime} is not installed ({runtimes.INSTALL[runtime]})")
    cfg = dict(batch_size=4, num_workers=0, device="cpu", spatial="s16+s32")
    torch_run = run(tmp_path, items[:4], cfg=FeaturesConfig(**cfg, runtime="torch"), name="torch")
    fast = run(tmp_path, items[:4], cfg=FeaturesConfig(**cfg, runtime=runtime), name="fast")
    assert (fast["runtime"], torch_run["runtime"]) == (runtime, "torch")
    want, got = load_features(tmp_path / "torch.parquet", grid=True), load_features(tmp_path / "fast.parquet", grid=True)
    assert got.meta["runtime"] == runtime and got.meta["features_id"] != want.meta["features_id"]
    ids = [f"im{i}" for i in range(4)]
    for spatial in (False, True):  # float16 in the cache: allow its rounding on top of the runtime tolerance
        a, b = want.lookup(ids, spatial=spatial).astype(np.float32), got.lookup(ids, spatial=spatial).astype(np.float32)
        assert np.abs(a - b).max() <= runtimes.TOLERANCE + 2e-3 * np.abs(a).max()
    # Another runtime is another features identity: nothing is reused across runtimes.
    again = run(tmp_path, items[:4], cfg=FeaturesConfig(**cfg, runtime="torch"), name="fast")
    assert (again["n_encoded"], again["n_reused"]) == (4, 0)
