"""The training loop on synthetic cached features whose captions depend on the feature."""
import pandas as pd
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.data.vocab import Vocab, VocabConfig
from pipeline.data.vocabularies import build_vocab
from pipeline.decoders import DecoderConfig, ShowTell
from pipeline.decoders.search import decode
from pipeline.training.train import TrainConfig, caption_pairs, train

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star"]


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(len(COLOURS), (n,), generator=g)
    shape = torch.randint(len(SHAPES), (n,), generator=g)
    feats = torch.randn(n, 32, generator=g) * 0.1
    feats[torch.arange(n), colour] += 2.0
    feats[torch.arange(n), 8 + shape] += 2.0
    caps = [[f"a {COLOURS[c]} {SHAPES[s]}", f"there is a {COLOURS[c]} {SHAPES[s]}"] for c, s in zip(colour, shape)]
    rows = pd.DataFrame({"image_id": [f"{seed}_{i}" for i in range(n)], "captions": caps})
    return rows, feats


def test_caption_pairs_pads_every_caption():
    vocab = build_vocab(["a red circle", "a red circle"], VocabConfig(min_freq=1))
    rows = pd.DataFrame({"captions": [["a red circle"], ["a red", "red circle a red"]]})
    index, tokens = caption_pairs(rows, vocab, max_len=5)
    assert index.tolist() == [0, 1, 1]
    assert tokens.shape == (3, 5)
    assert vocab.decode(tokens[2].tolist()) == "red circle a"  # truncated to fit max_len
    assert tokens[1, 4].item() == vocab.pad_id


def test_forward_shapes():
    model = ShowTell(16, 10, DecoderConfig(embed_size=8, hidden_size=12))
    logits = model(torch.randn(4, 16), torch.randint(0, 10, (4, 7)))
    assert logits.shape == (4, 6, 10)


def test_training_learns_and_checkpoint_loads_safely(tmp_path):
    train_rows, train_feats = synthetic(240, 0)
    val_rows, val_feats = synthetic(40, 1)
    vocab = build_vocab([c for caps in train_rows.captions for c in caps], VocabConfig(min_freq=1))
    cfg = TrainConfig(embed_size=32, hidden_size=64, lr=1e-2, epochs=12, patience=12, batch_size=32,
                      dropout=0.1, device="cpu")
    seen = []
    summary = train(train_rows, train_feats, val_rows, val_feats, vocab, cfg, tmp_path / "m.pt",
                    {"name": "synthetic"}, log_metric=seen.append)
    assert len(seen) == summary["epochs_run"] == 12
    assert seen[-1]["train_loss"] < seen[0]["train_loss"] * 0.5
    assert summary["best_val_cider"] > 2.0  # near-perfect captions on this easy task score high

    ckpt = load_checkpoint(tmp_path / "m.pt")  # weights_only=True inside
    assert ckpt["config"]["hidden_size"] == 64 and ckpt["extra"]["epoch"] == summary["best_epoch"]
    spec = ckpt["decoder"]
    model = ShowTell(spec["feature_dim"], spec["vocab_size"], DecoderConfig(32, 64, 1, 0.1))
    model.load_state_dict(ckpt["decoder_state"])
    loaded_vocab = Vocab.from_list(ckpt["vocab"])
    out = decode(model, val_feats, loaded_vocab.start_id, loaded_vocab.end_id, max_len=8)
    hyps = [loaded_vocab.decode(t) for t in out.tokens]
    correct = sum(any(h == r for r in refs) for h, refs in zip(hyps, val_rows.captions))
    assert correct >= 0.9 * len(hyps)


def test_length_bucketed_batches_cover_every_pair_once_and_group_lengths():
    from pipeline.training.train import length_bucketed_batches
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 20, (1000,), generator=g)
    batches = length_bucketed_batches(lengths, 10, g)
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    assert spread < 3  # random batches of 10 would spread over ~14 lengths


def test_a_schedule_longer_than_the_run_stops_the_learning_rate_schedule_early(tmp_path):
    """schedule_epochs: epoch 1 of a 1-epoch run planned over 3 epochs is epoch 1 of the 3-epoch run."""
    import pytest
    rows, feats = synthetic(48, 0)
    val_rows, val_feats = synthetic(8, 1)
    vocab = build_vocab([c for caps in rows.captions for c in caps], VocabConfig(min_freq=1))
    base = dict(embed_size=16, hidden_size=16, batch_size=16, device="cpu", lr=5e-3)

    def first_epoch_loss(name, **kw):
        summary = train(rows, feats, val_rows, val_feats, vocab, TrainConfig(**base, **kw), tmp_path / name,
                        {"name": "synthetic"})
        return summary["history"][0]["train_loss"]
    planned = first_epoch_loss("planned.pt", epochs=3, patience=9)
    assert first_epoch_loss("stopped.pt", epochs=1, schedule_epochs=3) == planned
    assert first_epoch_loss("short.pt", epochs=1) != planned  # a 1-epoch schedule warms up and decays sooner
    with pytest.raises(ValueError, match="schedule_epochs"):
        train(rows, feats, val_rows, val_feats, vocab, TrainConfig(**base, epochs=3, schedule_epochs=2),
              tmp_path / "bad.pt", {"name": "synthetic"})


def test_training_without_validation_images_is_a_clear_error(tmp_path):
    import pytest
    rows, feats = synthetic(8, 0)
    vocab = build_vocab([c for caps in rows.captions for c in caps], VocabConfig(min_freq=1))
    with pytest.raises(ValueError, match="val_fraction"):
        train(rows, feats, rows.iloc[:0], feats[:0], vocab, TrainConfig(epochs=1, device="cpu"),
              tmp_path / "m.pt", {"name": "synthetic"})


def spatial(n: int, seed: int) -> tuple[pd.DataFrame, torch.Tensor]:
    """The same task as `synthetic`, but colour and shape sit in different cells of a 2x2 map."""
    rows, flat = synthetic(n, seed)
    maps = torch.randn(n, 16, 2, 2, generator=torch.Generator().manual_seed(seed + 7)) * 0.1
    maps[:, :, 0, 0] += flat[:, :16]  # colour one-hot lives in cell (0, 0)
    maps[:, :, 1, 1] += flat[:, 8:24]  # shape one-hot in cell (1, 1)
    return rows, maps.half()  # as the cache stores them


def test_attention_decoder_trains_on_spatial_maps_then_scst_keeps_the_best(tmp_path, single_thread):
    train_rows, train_maps = spatial(160, 0)
    val_rows, val_maps = spatial(32, 1)
    vocab = build_vocab([c for caps in train_rows.captions for c in caps], VocabConfig(min_freq=1))
    cfg = TrainConfig(decoder="attention", embed_size=32, hidden_size=64, attention_dim=32, lr=1e-2, epochs=8,
                      patience=8, batch_size=32, dropout=0.1, device="cpu", scst_epochs=2, scst_lr=1e-4,
                      scst_batch_size=32, scst_samples=3)
    seen = []
    summary = train(train_rows, train_maps, val_rows, val_maps, vocab, cfg, tmp_path / "m.pt",
                    {"name": "synthetic"}, log_metric=seen.append)
    assert summary["xe_best_val_cider"] > 1.5
    assert len(summary["scst_history"]) == 2 and [r["epoch"] for r in seen[-2:]] == [9, 10]
    assert all("scst_reward" in r for r in seen[-2:])
    assert summary["best_val_cider"] >= summary["xe_best_val_cider"]  # SCST never makes the kept model worse
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["decoder"]["decoder"] == "attention" and ckpt["decoder"]["feature_shape"] == [16, 2, 2]
    assert ckpt["extra"]["val_cider"] == summary["best_val_cider"]


def test_spatial_decoder_on_pooled_features_is_a_clear_error(tmp_path):
    import pytest
    rows, feats = synthetic(8, 0)
    vocab = build_vocab([c for caps in rows.captions for c in caps], VocabConfig(min_freq=1))
    with pytest.raises(ValueError, match="train.decoder"):
        train(rows, feats, rows, feats, vocab, TrainConfig(decoder="transformer", epochs=1, device="cpu"),
              tmp_path / "m.pt", {"name": "synthetic"})


def test_precision_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    import pytest

    from pipeline.runtime import training_autocast_dtype
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert training_autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert training_autocast_dtype("auto", cpu) is None  # emulated bf16 would be slower than fp32
    assert training_autocast_dtype("bf16", cpu) is torch.bfloat16 and training_autocast_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="auto | fp32 | bf16"):
        training_autocast_dtype("fp16", cpu)


def test_bf16_training_learns_like_fp32_keeps_float32_weights_and_says_so(tmp_path, single_thread):
    train_rows, train_maps = spatial(160, 0)
    val_rows, val_maps = spatial(32, 1)
    vocab = build_vocab([c for caps in train_rows.captions for c in caps], VocabConfig(min_freq=1))
    scores = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(decoder="transformer", hidden_size=32, heads=4, num_layers=1, lr=1e-2, epochs=6,
                          patience=6, batch_size=32, dropout=0.1, device="cpu", precision=precision,
                          scst_epochs=1, scst_lr=1e-4, scst_batch_size=32, scst_samples=3)
        summary = train(train_rows, train_maps, val_rows, val_maps, vocab, cfg, tmp_path / f"{precision}.pt",
                        {"name": "synthetic"})
        ckpt = load_checkpoint(tmp_path / f"{precision}.pt")
        assert ckpt["extra"]["precision"] == precision
        assert all(t.dtype == torch.float32 for t in ckpt["decoder_state"].values() if t.is_floating_point())
        scores[precision] = summary["best_val_cider"]
    assert scores["fp32"] > 1.5 and scores["bf16"] > 1.5, scores
