"""One model for several caption languages (pipeline/data/multilingual.py): language tokens in
the vocabulary, captions that start with their language token in training (cross-entropy and
SCST), decoding in the language asked for, per-language metrics and tokenizers in evaluate, the
language in the Captioner, caption-batch (`--language`, its column, resume) and the errors for
languages a model or a tokenizer cannot handle. Tiny models on synthetic features: seconds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pipeline.checkpoint import load_checkpoint
from pipeline.data.multilingual import LanguageError, banned_ids, build_caption_vocab, start_id
from pipeline.data.tokenizers import score_tokens
from pipeline.data.vocab import Vocab, VocabConfig
from pipeline.data.vocabularies import build_vocab, from_payload, load_vocab
from pipeline.decoders import DecoderConfig, ShowTell
from pipeline.decoders.search import decode
from pipeline.encoders import EncoderConfig, build_encoder
from pipeline.evaluation import summary
from pipeline.evaluation.evaluate import EvaluateConfig, evaluate
from pipeline.feature_table import FeatureTable
from pipeline.inference.batch import CaptionConfig, caption_directory
from pipeline.inference.captioner import Captioner
from pipeline.cli import EXIT_USAGE, app
from pipeline.training.languages import LanguageRewards, epoch_pairs, pair_groups, pairs_per_epoch
from pipeline.training.scst import sample, sequence_log_probs
from pipeline.training.train import TrainConfig, train
from test_captioner import make_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")

COLOURS, SHAPES = ("red", "blue"), ("circle", "square")
# (colour, shape) -> how each language names it, as the scenes write it; then a second caption
PHRASES = {
    "en": {("red", "circle"): "a red circle", ("blue", "circle"): "a blue circle",
           ("red", "square"): "a red square", ("blue", "square"): "a blue square"},
    "de": {("red", "circle"): "ein roter Kreis", ("blue", "circle"): "ein blauer Kreis",
           ("red", "square"): "ein rotes Quadrat", ("blue", "square"): "ein blaues Quadrat"},
    "ja": {("red", "circle"): "赤い丸", ("blue", "circle"): "青い丸", ("red", "square"): "赤い四角",
           ("blue", "square"): "青い四角"},
}
SECOND = {"en": "there is {}", "de": "hier ist {}", "ja": "{}があります"}
WORDS = {language: {w for phrase in phrases.values() for w in SECOND[language].format(phrase).lower().split()}
         for language, phrases in PHRASES.items()}


def captions(language: str, pair: tuple[str, str]) -> list[str]:
    return [PHRASES[language][pair], SECOND[language].format(PHRASES[language][pair])]


OBJECTS = {(c, s): [{"colour": c, "shape": s, "size": "small", "x": 30, "y": 30}] for c in COLOURS for s in SHAPES}


def scenes(n: int, seed: int, languages: tuple[str, ...], feature_of=None) -> tuple[pd.DataFrame, torch.Tensor]:
    """Images of one coloured shape, captioned in each of `languages`; pooled features that say
    the colour and the shape (or feature_of(i) for image i: real encoder features)."""
    g = torch.Generator().manual_seed(seed)
    colour, shape = torch.randint(2, (n,), generator=g), torch.randint(2, (n,), generator=g)
    features = torch.randn(n, 16, generator=g) * 0.1
    features[torch.arange(n), colour] += 2.0
    features[torch.arange(n), 4 + shape] += 2.0
    pairs = [(COLOURS[c], SHAPES[s]) for c, s in zip(colour, shape)]
    rows = pd.DataFrame({
        "image_id": [f"{seed}_{i}.png" for i in range(n)], "path": [f"{seed}_{i}.png" for i in range(n)],
        "split": "train", "captions": [[t for lang in languages for t in captions(lang, p)] for p in pairs],
        "language": [[lang for lang in languages for _ in range(2)] for _ in pairs],
        "objects": [json.dumps(OBJECTS[p]) for p in pairs]})
    return rows, features if feature_of is None else torch.stack([feature_of(i) for i in range(n)])


def captions_of(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    return ([c for caps in rows.captions for c in caps], [code for codes in rows.language for code in codes])


CFG = dict(embed_size=32, hidden_size=64, lr=1e-2, batch_size=32, dropout=0.0, device="cpu")


@pytest.fixture(scope="module")
def trilingual(tmp_path_factory):
    """en + de + ja on the sentencepiece kind, one caption per image and language an epoch, then
    an SCST epoch scored per language (characters for Japanese)."""
    train_rows, train_features = scenes(160, 0, ("en", "de", "ja"))
    val_rows, val_features = scenes(24, 1, ("en", "de", "ja"))
    # 80 pieces: with 60, 3% of the train captions were longer than max_len and cut
    vocab = build_caption_vocab(*captions_of(train_rows), VocabConfig(kind="sentencepiece", model_type="bpe", size=80))
    cfg = TrainConfig(**CFG, epochs=12, patience=12, captions_per_language=1, max_len=16, scst_epochs=1,
                      scst_lr=1e-4, scst_samples=3, scst_batch_size=32)
    out = tmp_path_factory.mktemp("trilingual") / "model.pt"
    history = []
    result = train(train_rows, train_features, val_rows, val_features, vocab, cfg, out, {"name": "synthetic"},
                   log_metric=history.append)
    checkpoint = load_checkpoint(out)
    decoder = ShowTell(16, len(vocab), DecoderConfig(32, 64, 1, 0.0))
    decoder.load_state_dict(checkpoint["decoder_state"])
    return vocab, decoder.eval(), val_rows, val_features, result, history, checkpoint


def test_score_tokens_fit_each_language():
    assert score_tokens("A dog's bone (big).", "en") == ["a", "dog", "'s", "bone", "-lrb-", "big", "-rrb-"]
    assert score_tokens("Ein kleiner, roter Kreis.", "de") == ["ein", "kleiner", "roter", "kreis"]
    assert score_tokens("une étoile à gauche d'un carré", "fr") == "une étoile à gauche d un carré".split()
    assert score_tokens("二つの図形：赤い丸と3D", "ja") == ["二", "つ", "の", "図", "形", "赤", "い", "丸", "と", "3d"]
    assert score_tokens("红色的圆。", "zh-cn") == ["红", "色", "的", "圆"]


def test_vocabulary_gets_a_token_per_language_and_records_them(tmp_path):
    rows, _ = scenes(20, 0, ("de", "en"))
    vocab = build_caption_vocab(*captions_of(rows), VocabConfig(min_freq=1))
    assert vocab.languages == ["en", "de"]  # English first: the default language
    assert {"<2en>", "<2de>"} <= set(vocab.stoi) and vocab.language_id("de") == vocab.stoi["<2de>"]
    assert set(banned_ids(vocab)) >= {vocab.stoi["<2en>"], vocab.stoi["<2de>"], vocab.start_id, vocab.unk_id}
    vocab.save(tmp_path / "vocab.json")
    for loaded in (load_vocab(tmp_path / "vocab.json"), from_payload(vocab.payload())):
        assert loaded.languages == ["en", "de"] and loaded.itos == vocab.itos
    subword = build_caption_vocab(*captions_of(rows), VocabConfig(kind="sentencepiece", size=30))
    assert subword.languages == ["en", "de"] and from_payload(subword.payload()).languages == ["en", "de"]
    assert subword.language_id("de") in subword.token_ids("<2de> ein roter Kreis")  # one whole piece
    with pytest.raises(ValueError, match="no token for language 'fr'"):
        vocab.language_id("fr")


def test_one_language_vocabulary_is_the_one_of_before(tmp_path):
    """No language token, no `languages` anywhere: data/vocab.json and checkpoints as before."""
    rows, _ = scenes(20, 0, ("en",))
    captions, languages = captions_of(rows)
    for cfg in (VocabConfig(min_freq=1), VocabConfig(kind="sentencepiece", size=20)):
        built, plain = build_caption_vocab(captions, languages, cfg), build_vocab(captions, cfg)
        built.save(tmp_path / "built.json")
        plain.save(tmp_path / "plain.json")
        assert (tmp_path / "built.json").read_bytes() == (tmp_path / "plain.json").read_bytes()
        assert built.languages == [] and not any(t.startswith("<2") for t in built.itos)
        assert start_id(built, "en") == built.start_id and banned_ids(built) == (0, 1, 3)
    assert isinstance(build_caption_vocab(captions, languages, VocabConfig(min_freq=1)).payload(), list)


def test_word_kind_refuses_languages_without_spaces():
    rows, _ = scenes(10, 0, ("en", "ja"))
    with pytest.raises(ValueError, match="ja is written without spaces.*vocab.kind: sentencepiece"):
        build_caption_vocab(*captions_of(rows), VocabConfig(min_freq=1))
    assert build_caption_vocab(*captions_of(rows), VocabConfig(kind="sentencepiece", size=34)).languages == ["en", "ja"]


def test_vocab_stage_adds_the_languages_or_refuses_the_word_kind(tmp_path):
    from pipeline.data.manifest import write_manifest
    rows, _ = scenes(12, 0, ("en", "ja"))
    rows["split"] = ["train"] * 10 + ["test"] * 2
    write_manifest(rows.drop(columns="objects"), tmp_path / "manifest.parquet", tmp_path)

    def vocab_stage(kind: str) -> subprocess.CompletedProcess:
        (tmp_path / "params.yaml").write_text(f"vocab:\n  kind: {kind}\n  size: 34\n  min_freq: 1\n")
        return subprocess.run([sys.executable, "-m", "stages.vocab", "--params", tmp_path / "params.yaml",
                               "--manifest", tmp_path / "manifest.parquet", "--out", tmp_path / "vocab.json",
                               "--report", tmp_path / "report.json"], cwd=ROOT, capture_output=True, text=True)
    refused = vocab_stage("word")
    assert refused.returncode != 0 and "set vocab.kind: sentencepiece" in refused.stderr
    assert vocab_stage("sentencepiece").returncode == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["languages"] == ["en", "ja"] and set(report["tokens_per_caption_by_language"]) == {"en", "ja"}
    assert load_vocab(tmp_path / "vocab.json").languages == ["en", "ja"]


def test_each_language_token_decodes_captions_in_its_language(trilingual):
    vocab, decoder, val_rows, val_features, result, history, checkpoint = trilingual
    truth = [json.loads(o)[0] for o in val_rows.objects]
    for language in ("en", "de", "ja"):
        out = decode(decoder, val_features, start_id(vocab, language), vocab.end_id, max_len=16,
                     banned_ids=banned_ids(vocab))
        texts = [vocab.decode(t) for t in out.tokens]
        assert not any(i in banned_ids(vocab) for t in out.tokens for i in t)
        if language == "ja":  # no Latin letter: every caption is Japanese
            assert all(t and not any(ch.isascii() and ch.isalpha() for ch in t) for t in texts), texts
        else:
            assert all(t and set(t.split()) <= WORDS[language] for t in texts), (language, texts)
        from pipeline.evaluation.grounded import score_caption
        right = [score_caption(t, [o], language=language).exact_set for t, o in zip(texts, truth)]
        assert np.mean(right) >= 0.75, (language, texts)  # and they describe the image
    assert checkpoint["extra"]["languages"] == ["en", "de", "ja"]
    assert from_payload(checkpoint["vocab"]).languages == ["en", "de", "ja"]
    assert result["scst_history"] and all(np.isfinite(h["val_cider"]) for h in history)


def test_start_ids_per_row_decode_and_sample_like_one_id_each(trilingual):
    vocab, decoder, _, features, *_ = trilingual
    features = features[:6]
    codes = ["en", "de", "ja", "ja", "en", "de"]
    mixed = torch.tensor([start_id(vocab, c) for c in codes])
    for beam in (1, 2):
        together = decode(decoder, features, mixed, vocab.end_id, 12, beam_size=beam, banned_ids=banned_ids(vocab))
        for language in set(codes):
            rows = [i for i, c in enumerate(codes) if c == language]
            alone = decode(decoder, features[rows], start_id(vocab, language), vocab.end_id, 12, beam_size=beam,
                           banned_ids=banned_ids(vocab))
            assert [together.tokens[i] for i in rows] == alone.tokens
    tokens, logp, mask = sample(decoder, features, mixed, vocab.end_id, 12, 3, banned_ids(vocab),
                                torch.Generator().manual_seed(0))
    scored = sequence_log_probs(decoder, features, tokens, mask, 3, mixed, vocab.end_id, banned_ids(vocab))
    torch.testing.assert_close(scored, logp, atol=1e-4, rtol=1e-4)  # the per-row start reached both


def test_captions_per_language_draws_k_of_each_image_and_language_afresh():
    rows, _ = scenes(30, 0, ("en", "de"))
    groups = pair_groups(rows)
    assert len(groups) == 30 * 4 and len(set(groups.tolist())) == 60 and pairs_per_epoch(groups, 1) == 60
    generator = torch.Generator().manual_seed(0)
    draws = [epoch_pairs(groups, 1, generator) for _ in range(4)]
    for chosen in draws:
        assert sorted(groups[chosen.numpy()].tolist()) == list(range(60))  # one of each group
    assert len({tuple(d.tolist()) for d in draws}) > 1  # drawn afresh each epoch
    assert len(set(torch.cat(draws).tolist())) > 60  # so other captions come round
    assert len(epoch_pairs(groups, 5, generator)) == 120  # k above a group's size takes it whole


def test_scst_scores_each_image_in_one_language_in_turn():
    rows, _ = scenes(6, 0, ("en", "de"))
    vocab = build_caption_vocab(*captions_of(rows), VocabConfig(min_freq=1))
    rewards = LanguageRewards(rows, vocab, vocab.languages)
    first, second = rewards.epoch(1), rewards.epoch(2)
    ids = {vocab.language_id(c): c for c in vocab.languages}
    languages = [ids[int(i)] for i in first["start_id"]]
    assert languages == ["de", "en"] * 3 and [ids[int(i)] for i in second["start_id"]] == ["en", "de"] * 3
    for i, language in enumerate(languages):  # the references and scorer of the image's language
        assert first["image_refs"][i] == rewards.refs[language][i] and first["scorer"][i] is rewards.scorers[language]
        assert len(first["image_refs"][i]) == 2
    one = LanguageRewards(rows.assign(captions=[c[:2] for c in rows.captions], language=[["en", "en"]] * 6),
                          build_vocab([c for caps in rows.captions for c in caps[:2]], VocabConfig(min_freq=1)), ["en"])
    assert one.epoch(1)["start_id"] == vocab.start_id and not isinstance(one.epoch(1)["scorer"], list)


def test_training_rejects_a_vocabulary_without_the_captions_languages(tmp_path):
    rows, features = scenes(8, 0, ("en", "de"))
    english = build_vocab([c for caps in rows.captions for c in caps], VocabConfig(min_freq=1))
    with pytest.raises(ValueError, match="no language tokens.*dvc repro vocab"):
        train(rows, features, rows, features, english, TrainConfig(**CFG, epochs=1), tmp_path / "m.pt", {})


# --- the Captioner, caption-batch and evaluate on a model of real (random-init) encoder features ----

@pytest.fixture(scope="module")
def bilingual(tmp_path_factory):
    """en + de, word kind, show_tell on the pooled features of a random-init efficientnet_lite0,
    checkpoint in the train stage's format: what Captioner.from_checkpoint reads."""
    folder = tmp_path_factory.mktemp("bilingual")
    images = [make_image(folder / "images" / f"{i}.png", seed=i) for i in range(4)]
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "none"))
    from pipeline.data.images import load_image_tensor
    with torch.no_grad():
        pooled = encoder(torch.stack([load_image_tensor(p, encoder.preprocess)[0] for p in images])).half().float()
    rows, features = scenes(24, 0, ("en", "de"), feature_of=lambda i: pooled[i % 4])
    vocab = build_caption_vocab(*captions_of(rows), VocabConfig(min_freq=1))
    info = {"name": encoder.name, "weights": "none", "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "feature_dim": encoder.feature_dim}
    cfg = TrainConfig(**{**CFG, "embed_size": 16, "hidden_size": 32, "batch_size": 16}, epochs=15, patience=15,
                      max_len=10)
    train(rows, features, rows, features, vocab, cfg, folder / "model.pt", info)
    return folder / "model.pt", folder / "images", rows, features


def test_captioner_captions_in_the_language_asked_for(bilingual):
    checkpoint, images, *_ = bilingual
    captioner = Captioner.from_checkpoint(checkpoint, beam_size=2, max_len=8, runtime="torch")
    assert captioner.languages == ["en", "de"] and captioner.language == "en"
    image = images / "0.png"
    english, german = captioner.generate_caption(image), captioner.generate_caption(image, language="de")
    assert set(english.split()) <= WORDS["en"] and set(german.split()) <= WORDS["de"], (english, german)
    assert captioner.generate_caption(image, language="en") == english
    results = captioner.caption_batch([image, images / "1.png"], language="de")
    assert results[0].caption == german and set(results[1].caption.split()) <= WORDS["de"]
    assert captioner.settings["language"] == "en"
    german_captioner = Captioner.from_checkpoint(checkpoint, beam_size=2, max_len=8, runtime="torch", language="de")
    assert german_captioner.generate_caption(image) == german and german_captioner.settings["language"] == "de"
    for bad in ("fr", "xx", "German"):
        with pytest.raises(LanguageError, match=f"cannot caption in '{bad}'.*trained on en, de only"):
            captioner.generate_caption(image, language=bad)
    with pytest.raises(LanguageError, match="en, de"):
        Captioner.from_checkpoint(checkpoint, runtime="torch", language="ja")


def test_caption_batch_language_column_and_resume_per_language(bilingual, tmp_path):
    checkpoint, images, *_ = bilingual
    out = tmp_path / "out.parquet"
    base = dict(batch_size=4, num_workers=0, threads=1, beam_size=2, max_len=8, runtime="torch")
    german = caption_directory(images, out, checkpoint, CaptionConfig(**base, language="de"))
    rows = pq.read_table(out).to_pylist()
    assert german["new"] == 4 and german["language"] == "de" and {r["language"] for r in rows} == {"de"}
    assert all(set(r["caption"].split()) <= WORDS["de"] and '"language":"de"' in r["settings"] for r in rows)
    english = caption_directory(images, out, checkpoint, CaptionConfig(**base))  # the default: en
    rows = pq.read_table(out).to_pylist()
    assert english["recaptioned_settings"] == 4 and english["reused"] == 0  # German rows are not English ones
    assert {r["language"] for r in rows} == {"en"} and all(set(r["caption"].split()) <= WORDS["en"] for r in rows)
    again = caption_directory(images, out, checkpoint, CaptionConfig(**base, language="en"))
    assert again["reused"] == 4 and again["captioned"] == 0


def test_cli_language_option_and_its_errors(bilingual, tmp_path):
    checkpoint, images, *_ = bilingual
    fast = ["--threads", "1", "--workers", "0", "--batch-size", "4", "--beam-size", "2", "--max-len", "6",
            "--runtime", "torch", "--model", str(checkpoint)]
    done = CliRunner().invoke(app, [str(images), str(tmp_path / "de.parquet"), "--language", "de", *fast])
    assert done.exit_code == 0, done.output
    assert set(pq.read_table(tmp_path / "de.parquet").column("language").to_pylist()) == {"de"}
    for bad in ("xx", "ja"):
        refused = CliRunner().invoke(app, [str(images), str(tmp_path / "x.parquet"), "--language", bad, *fast])
        assert refused.exit_code == EXIT_USAGE and "trained on en, de only" in refused.output
        assert not (tmp_path / "x.parquet").exists()


def test_one_language_model_keeps_its_settings_and_names_its_language(tmp_path):
    from test_captioner import make_checkpoint
    checkpoint = make_checkpoint(tmp_path / "model.pt")  # written before languages: no record at all
    captioner = Captioner.from_checkpoint(checkpoint, beam_size=2, max_len=5, runtime="torch")
    assert captioner.languages == ["en"] and "language" not in captioner.settings
    with pytest.raises(LanguageError, match="trained on en only"):
        captioner.generate_caption(make_image(tmp_path / "a.png", 0), language="de")
    make_image(tmp_path / "images" / "a.png", 0)
    caption_directory(tmp_path / "images", tmp_path / "out.parquet", checkpoint,
                      CaptionConfig(batch_size=4, num_workers=0, threads=1, beam_size=2, max_len=5, runtime="torch"))
    assert pq.read_table(tmp_path / "out.parquet").column("language").to_pylist() == ["en"]


def test_evaluate_scores_each_language_against_its_own_captions(bilingual, monkeypatch):
    checkpoint, _, rows, features = bilingual
    monkeypatch.setattr("pipeline.evaluation.metrics._meteor_nltk", lambda gts, res: (None, []))  # WordNet: ~10 s
    captioner = Captioner.from_checkpoint(checkpoint, runtime="torch")
    manifest = rows.assign(split=["test"] * 16 + ["train"] * 8)
    table = FeatureTable(list(manifest.image_id), features.numpy(),
                         {"fingerprint": captioner.encoder_info["fingerprint"]})
    metrics, per_image, info = evaluate(captioner, manifest, table, EvaluateConfig(beam_size=2, backend="python"))
    assert set(metrics["test"]) == {"greedy", "beam"} and set(metrics["by_language"]["de"]["test"]) == {"greedy"}
    for block in (metrics["test"]["greedy"], metrics["by_language"]["de"]["test"]["greedy"]):
        assert 0.0 <= block["bleu_4"] <= 1.0 and block["grounded"]["n"] == 16
    assert "meteor" not in metrics["by_language"]["de"]["test"]["greedy"]
    assert info["default_language"] == "en" and info["languages"]["de"]["decodings"] == ["greedy"]
    assert info["languages"]["de"]["tokenizer"].startswith("Unicode words")
    assert "English only" in info["languages"]["de"]["skipped"]["meteor"]
    german = per_image[per_image.language == "de"]
    assert len(german) == 16 and all(len(refs) == 2 and not any(c.startswith(("a ", "there ")) for c in refs)
                                     for refs in german.references)  # its German captions only
    assert all(set(c.split()) <= WORDS["de"] for c in german.caption)
    table_text = summary.summary_table(metrics)
    assert "test de" in table_text and table_text.count("\n") == 1 + 2 + 1  # header, rule, en x2, de x1


def test_ray_engine_refuses_an_untrained_language_before_starting(bilingual, tmp_path):
    from pipeline.distributed.ray_engine import caption_directory_ray
    checkpoint, images, *_ = bilingual
    with pytest.raises(LanguageError, match="trained on en, de only"):
        caption_directory_ray(images, tmp_path / "out.parquet", checkpoint, CaptionConfig(language="fr"))
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.ray
def test_ray_engine_captions_in_the_language_asked_for(bilingual, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from pipeline.distributed.ray_engine import caption_directory_ray
    checkpoint, images, *_ = bilingual
    cfg = CaptionConfig(batch_size=2, num_workers=0, threads=1, beam_size=2, max_len=8, runtime="torch", language="de")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        summary = caption_directory_ray(images, tmp_path / "ray.parquet", checkpoint, cfg)
    finally:
        ray.shutdown()
    caption_directory(images, tmp_path / "local.parquet", checkpoint, cfg)
    rows, local = (pq.read_table(tmp_path / f"{name}.parquet").to_pylist() for name in ("ray", "local"))
    assert summary["language"] == "de" and rows == local  # the local engine's rows, row for row
    assert {r["language"] for r in rows} == {"de"} and all(set(r["caption"].split()) <= WORDS["de"] for r in rows)
