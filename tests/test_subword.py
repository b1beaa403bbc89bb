"""The sentencepiece vocabulary (vocab.kind: sentencepiece): round trips, train-only learning,
determinism, no <unk>, SCST's word-level reward, a tiny training and the checkpoint."""
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.config import build
from pipeline.data.manifest import write_manifest
from pipeline.data.subword import SubwordVocab
from pipeline.data.vocab import SPECIALS, Vocab, VocabConfig, normalise, unk_rate
from pipeline.data.vocabularies import build_vocab, from_payload, load_vocab
from pipeline.decoders import decoder_from_spec
from pipeline.decoders.search import decode
from pipeline.training.cider_d import CiderD, reference_tokens
from pipeline.training.scst import sample_rewards
from pipeline.training.train import TrainConfig, train
from test_train import spatial

CAPTIONS = [
    "A small red circle to the left of a blue square.",
    "Two shapes: a red circle and a green triangle!",
    "A dog (big) can't eat 50% of [the] cake & cannot stop",
    "there's a blue square above the green triangle",
    "赤い丸が青い四角の左にある。",  # Japanese: no spaces
    "青い四角の上に緑の三角がある。",
] * 3


def sp(captions=CAPTIONS, **kw) -> SubwordVocab:
    return build_vocab(captions, VocabConfig(kind="sentencepiece", **{"size": 64, **kw}))


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_decode_gives_the_normalised_caption_back_like_the_word_kind(model_type):
    vocab, words = sp(model_type=model_type), build_vocab(CAPTIONS, VocabConfig(min_freq=1))
    assert vocab.itos[: len(SPECIALS)] == list(SPECIALS) and len(vocab) == 64
    unseen = ["a green circle to the right of the red triangle", "赤い丸の上に青い四角がある。"]  # train characters
    for caption in [*CAPTIONS[:6], *unseen]:
        ids = vocab.encode(caption)
        assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and vocab.unk_id not in ids
        assert vocab.decode(ids) == normalise(caption), caption
    assert vocab.decode(vocab.encode(CAPTIONS[2])) == "a dog ( big ) ca n't eat 50 % of [ the ] cake & can not stop"
    assert all(vocab.decode(vocab.encode(c)) == words.decode(words.encode(c)) for c in CAPTIONS[:6])
    assert len(vocab.encode("赤い丸が青い四角の左にある。")) > 3  # one run of pieces, not one unknown word
    ids = vocab.encode(CAPTIONS[0], max_len=5)
    assert len(ids) == 5 and ids[-1] == vocab.end_id
    assert vocab.decode([*vocab.encode("a red circle")[:-1], vocab.end_id, *vocab.encode("blue")]) == "a red circle"


def test_verbatim_pieces_keep_case_and_punctuation_and_the_metrics_still_compare_words(tmp_path):
    caps = ["ein kleiner roter Kreis links von einem blauen Quadrat",
            "drei Formen: ein Kreis, ein Stern und ein Quadrat",
            "le petit triangle jaune est au-dessus de l'étoile violette",
            "赤い丸が青い四角の左にある。"] * 3
    vocab = sp(caps, size=64, verbatim=True)
    for caption in [*caps[:4], "ein roter  Stern\nlinks von einem Kreis", "l'étoile jaune, un Kreis"]:
        ids = vocab.encode(caption)
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == " ".join(caption.split()), caption  # as written, spaces collapsed
    assert unk_rate(vocab, caps) == 0.0 and unk_rate(vocab, ["ein Quadrat"]) == 0.0
    assert unk_rate(vocab, ["ein Würfel"]) == 0.5  # one of two written words has an unseen letter
    # the reward and the metrics see lower-cased words, as they see the references
    assert vocab.reward_words("Drei Formen: ein Kreis", "de") == ["drei", "formen", "ein", "kreis"]
    # the flag travels with the vocabulary (file and checkpoint payload); files without it load as before
    vocab.save(tmp_path / "v.json")
    again = load_vocab(tmp_path / "v.json")
    assert again.verbatim and again.decode(again.encode(caps[1])) == caps[1]
    plain = sp(caps, size=56)
    assert "verbatim" not in plain.payload() and not from_payload(plain.payload()).verbatim
    assert plain.decode(plain.encode(caps[1])) == "drei formen ein kreis ein stern und ein quadrat"


def test_only_train_captions_shape_the_pieces(tmp_path, monkeypatch):
    """Stage `vocab` end to end: a word only in val/test captions gets no piece of its own, and
    changing val/test captions leaves data/vocab.json byte-identical; test <unk> rate 0."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the stages package
    from stages import vocab as stage
    train_caps = ["a red circle above a blue square", "a green triangle left of a red star"] * 4
    params = tmp_path / "params.yaml"
    params.write_text("vocab:\n  kind: sentencepiece\n  model_type: bpe\n  size: 60\n")

    def run(other: str) -> tuple[bytes, dict]:
        df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "path": ["a.png", "b.png", "c.png", "d.png"],
                           "split": ["train", "train", "val", "test"],
                           "captions": [train_caps[:4], train_caps[4:], [other], [f"a {other} circle"]]})
        write_manifest(df, tmp_path / "m.parquet", "data")
        monkeypatch.setattr(sys, "argv", ["vocab", "--params", str(params), "--manifest", str(tmp_path / "m.parquet"),
                                          "--out", str(tmp_path / "v.json"), "--report", str(tmp_path / "r.json")])
        stage.main()
        return (tmp_path / "v.json").read_bytes(), json.loads((tmp_path / "r.json").read_text())

    first, report = run("starboard")
    again, _ = run("redstone")
    assert first == again
    vocab = load_vocab(tmp_path / "v.json")
    assert isinstance(vocab, SubwordVocab) and "▁starboard" not in vocab.stoi and "▁red" in vocab.stoi
    assert vocab.decode(vocab.encode("a starboard circle")) == "a starboard circle"  # spelled from train pieces
    assert report["kind"] == "sentencepiece" and report["size"] == 60 == len(vocab)
    assert report["unk_rate_test"] == report["unk_rate_val"] == report["unk_rate_train"] == 0.0
    assert report["tokens_per_caption"] >= 7 and report["max_tokens_per_caption"] >= report["tokens_per_caption"]


def test_training_is_deterministic():
    assert sp().model == sp().model
    assert sp(model_type="bpe").model == sp(model_type="bpe").model
    assert sp().model != sp(size=60).model


def test_unseen_characters_are_unk_without_byte_fallback_and_bytes_with_it():
    unseen = "a zebra über the cake"  # z and ü never occur in the train captions
    assert unk_rate(sp(), [unseen]) == pytest.approx(2 / 5)  # "zebra" and "über"
    assert unk_rate(build_vocab(CAPTIONS, VocabConfig(min_freq=1)), [unseen]) == pytest.approx(2 / 5)
    fallback = sp(size=320, byte_fallback=True)
    ids = fallback.encode(unseen)
    assert fallback.unk_id not in ids and unk_rate(fallback, [unseen, *CAPTIONS]) == 0.0
    assert fallback.decode(ids) == unseen


def test_special_tokens_stay_whole_in_both_kinds():
    caps = ["<2ja> 赤い丸", "<2de> ein roter kreis", "a red circle"] * 2
    for vocab in (sp(caps, size=25, special_tokens=["<2de>", "<2ja>"]),
                  build_vocab(caps, VocabConfig(min_freq=1, special_tokens=["<2de>", "<2ja>"]))):
        ids = vocab.encode("<2de> ein roter kreis")
        assert vocab.stoi["<2de>"] in ids and vocab.decode(ids) == "<2de> ein roter kreis", vocab.kind
    # in the word kind they follow the 4 specials whatever their counts (<2de>: 2 < min_freq, not special here)
    rare = build_vocab([*caps, "a red circle"], VocabConfig(min_freq=3, special_tokens=["<2fr>"]))
    assert rare.itos[4:] == ["<2fr>", "a", "circle", "red"]


@pytest.mark.parametrize("values, param", [
    ({"kind": "bytes"}, "vocab.kind"), ({"model_type": "wordpiece"}, "vocab.model_type"),
    ({"character_coverage": 0}, "vocab.character_coverage"), ({"special_tokens": ["<2DE>"]}, "vocab.special_tokens"),
    ({"special_tokens": ["<2de>", "<2de>"]}, "vocab.special_tokens"), ({"kind": "sentencepiece", "size": 4}, "vocab.size"),
    ({"kind": "word", "verbatim": True}, "vocab.verbatim"),
])
def test_bad_params_name_the_param(values, param):
    with pytest.raises(ValueError, match=param):
        build(VocabConfig, values, "vocab")


def test_sizes_sentencepiece_refuses_name_vocab_size_and_the_limit():
    with pytest.raises(ValueError, match=r"vocab.size=5000 .* at most \d+"):
        sp(size=5000)
    with pytest.raises(ValueError, match=r"vocab.size=300 cannot hold .*vocab.byte_fallback"):
        sp(size=300, byte_fallback=True)


def test_scst_reward_counts_words_not_pieces():
    caps = ["a red circle", "a blue square", "a red square", "a blue circle"] * 3
    vocab, words = sp(caps, model_type="bpe", size=30), build_vocab(caps, VocabConfig(min_freq=1))
    corpus = [["a red circle", "a red square"], ["a blue square"], ["a blue circle"]]  # images' references
    assert reference_tokens(corpus, vocab)[0] == [["a", "red", "circle"], ["a", "red", "square"]]
    canonical = vocab.encode("a red circle")[1:]  # pieces, then <end>
    letters = [vocab.stoi[p] for p in ("▁", "r", "e", "d")]  # "red" letter by letter
    spelled = [*vocab.token_ids("a"), *letters, *vocab.token_ids("circle"), vocab.end_id]
    assert canonical != spelled and vocab.decode(spelled) == "a red circle"
    width = max(len(canonical), len(spelled))
    samples = torch.tensor([ids + [vocab.pad_id] * (width - len(ids)) for ids in (canonical, spelled)])
    mask = samples != vocab.pad_id
    refs = reference_tokens(corpus, vocab)
    by_pieces = CiderD(refs, end=vocab.end_id)
    rewards = sample_rewards(by_pieces, samples, mask, refs[:1], 2, words=vocab.sampled_words)
    # the word kind's reward of the same caption (word ids on both sides)
    word_refs = reference_tokens(corpus, words)
    expected = CiderD(word_refs, end=words.end_id).score(words.encode("a red circle")[1:], word_refs[0])
    assert rewards[0, 0] == rewards[0, 1] == pytest.approx(expected) and expected > 1
    assert sample_rewards(by_pieces, samples, mask, refs[:1], 2)[0, 1] < 0.1  # raw piece ids match no word


def test_tiny_training_with_subwords_decodes_words_and_checkpoint_loads_safely(tmp_path, single_thread):
    train_rows, train_maps = spatial(160, 0)
    val_rows, val_maps = spatial(32, 1)
    vocab = sp([c for caps in train_rows.captions for c in caps], model_type="bpe", size=40)
    assert "▁red" not in vocab.stoi and len(vocab.token_ids("a red circle")) > 4  # words spelled in pieces
    # alpha_c 0: the doubly stochastic penalty wants ~1 step per location, these 2x2 maps get ~12
    cfg = TrainConfig(decoder="attention", embed_size=32, hidden_size=64, attention_dim=32, alpha_c=0.0, lr=1e-2,
                      epochs=12, patience=12, batch_size=32, dropout=0.1, device="cpu", scst_epochs=1, scst_lr=1e-4,
                      scst_samples=3, scst_batch_size=32)
    summary = train(train_rows, train_maps, val_rows, val_maps, vocab, cfg, tmp_path / "m.pt", {"name": "synthetic"})
    assert summary["best_val_cider"] > 5.0 and summary["scst_history"][0]["scst_reward"] > 3.0

    ckpt = load_checkpoint(tmp_path / "m.pt")  # torch.load(weights_only=True) inside
    assert ckpt["vocab"]["kind"] == "sentencepiece" and isinstance(ckpt["vocab"]["model"], str)
    loaded = from_payload(ckpt["vocab"])  # all the Captioner needs: no data/vocab.json
    assert isinstance(loaded, SubwordVocab) and loaded.model == vocab.model
    decoder = decoder_from_spec(ckpt["decoder"])
    decoder.load_state_dict(ckpt["decoder_state"])
    out = decode(decoder.eval(), val_maps.float(), loaded.start_id, loaded.end_id, max_len=16,
                 banned_ids=(loaded.pad_id, loaded.start_id, loaded.unk_id))
    hyps = [loaded.decode(t) for t in out.tokens]
    correct = sum(h in refs for h, refs in zip(hyps, val_rows.captions))
    assert correct >= 0.9 * len(hyps), list(zip(hyps, val_rows.captions))[:8]


def test_captioner_decodes_a_subword_checkpoint_to_text(tmp_path):
    """The checkpoint alone (no data/vocab.json) gives the Captioner its sentencepiece model."""
    from pipeline.checkpoint import save_checkpoint
    from pipeline.data.images import load_image_tensor
    from pipeline.decoders import DecoderConfig, ShowTell
    from pipeline.encoders import EncoderConfig, build_encoder
    from pipeline.inference.captioner import Captioner
    from test_captioner import make_image

    vocab = sp(model_type="bpe")
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "none"))
    torch.manual_seed(0)
    decoder = ShowTell(encoder.feature_dim, len(vocab), DecoderConfig(embed_size=8, hidden_size=16, dropout=0.0))
    info = {"name": encoder.name, "weights": "none", "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "feature_dim": encoder.feature_dim}
    save_checkpoint(tmp_path / "m.pt", decoder_state=decoder.state_dict(), decoder=decoder.describe(),
                    vocab=vocab.payload(), encoder=info, config={})
    captioner = Captioner.from_checkpoint(tmp_path / "m.pt", max_len=12, runtime="torch")
    assert isinstance(captioner.vocab, SubwordVocab) and captioner.vocab.model == vocab.model
    image = make_image(tmp_path / "a.png", 0)
    caption = captioner.generate_caption(image)
    tensor, _ = load_image_tensor(image, captioner.preprocess)
    tokens = captioner.decode_features(captioner.encode(tensor.unsqueeze(0))).tokens[0]
    assert len(tokens) > 1 and caption == vocab.decode(tokens) == vocab.processor.decode(tokens)
    assert "▁" not in caption and "<" not in caption  # pieces joined into text, no specials
