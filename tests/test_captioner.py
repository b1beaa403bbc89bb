"""The Python API on a checkpoint the test builds itself (random-init efficientnet_lite0,
tiny decoder). `make_checkpoint` and `make_image` are also used by test_batch and test_cli."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data.images import ImageLoadError, load_image_tensor
from pipeline.data.vocab import Vocab
from pipeline.decoders import DecoderConfig, ShowTell
from pipeline.encoders import EncoderConfig, build_encoder
from pipeline.inference.captioner import Captioner, CheckpointMismatchError

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right"]


def make_checkpoint(path: Path, seed: int = 0, vocab_size: int | None = None, image_size: int = 0,
                    weights: str = "none", precision: str | None = None, finetuned: bool = False) -> Path:
    """A checkpoint in the train stage's format. Random weights, but calibrated so that captions
    are a few real words that differ between images: the image BatchNorm standardises the
    (nearly identical) random-encoder features of a few images, special tokens are unlikely.
    `precision` is recorded as the features stage records it; `finetuned` stores the encoder's
    weights and fingerprint the way pipeline.training.finetune does."""
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", weights, image_size=image_size))
    vocab = Vocab(WORDS)
    torch.manual_seed(seed)
    decoder = ShowTell(encoder.feature_dim, len(vocab), DecoderConfig(embed_size=8, hidden_size=16, dropout=0.0))
    pictures = [Image.fromarray(np.full((32, 32, 3), 25 * i, np.uint8)) for i in range(8)]
    with torch.no_grad():
        embedded = decoder.image_embed(encoder(torch.stack([encoder.preprocess(p) for p in pictures])))
        decoder.image_bn.running_mean.copy_(embedded.mean(0))
        decoder.image_bn.running_var.copy_(embedded.var(0) / 4)
        for weight in (decoder.lstm.weight_ih_l0, decoder.lstm.weight_hh_l0, decoder.head.weight):
            weight.mul_(4.0)  # default init is too gentle for the image to matter
        decoder.head.bias[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -20.0
        decoder.head.bias[vocab.end_id] = -1.0
    describe = decoder.describe()
    if vocab_size is not None:
        describe["vocab_size"] = vocab_size
    info = {"name": encoder.name, "weights": weights, "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "feature_dim": encoder.feature_dim}
    if precision is not None:
        info["precision"] = precision
    encoder_state = None
    if finetuned:
        from pipeline.hashing import state_digest
        encoder_state = encoder.encoder_state_dict()
        info.update(fingerprint=f"{encoder.fingerprint}+finetuned-{state_digest(encoder_state)}",
                    base_fingerprint=encoder.fingerprint, unfreeze_blocks=2)
    save_checkpoint(path, decoder_state=decoder.state_dict(), decoder=describe, vocab=vocab.to_list(),
                    encoder=info, config={"seed": seed}, encoder_state=encoder_state)
    return path


def make_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Path:
    """Random blocky picture (distinct per seed) in any PIL mode/format given by the suffix."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size[1] // 4 + 1, size[0] // 4 + 1, 1), dtype=np.uint8))[: size[1], : size[0]]
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def captioner(checkpoint) -> Captioner:
    return Captioner.from_checkpoint(checkpoint, beam_size=2, max_len=6)


def test_generate_caption_equals_batch_and_decoding_of_the_features(captioner, tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    single = [captioner.generate_caption(p) for p in paths]
    results = captioner.caption_batch(paths, batch_size=2)
    assert [r.caption for r in results] == single
    assert [r.path for r in results] == [str(p) for p in paths]
    assert all(r.error is None and (r.width, r.height) == (48, 40) for r in results)
    # Independent route: the same tensors through encoder + decoder by hand.
    images = torch.stack([load_image_tensor(p, captioner.preprocess)[0] for p in paths])
    words = captioner.vocab.stoi
    with torch.inference_mode():
        features = captioner.encoder(images).half().float()
    decoded = captioner.decode_features(features)
    assert [captioner.vocab.decode(t) for t in decoded.tokens] == single
    assert all(len(c.split()) >= 1 and all(w in words for w in c.split()) for c in single)
    # Each image scores differently, so a mix-up of images and results would show here.
    assert len({round(r.mean_logprob, 4) for r in results}) == len(results)
    assert [r.mean_logprob for r in results] == pytest.approx(decoded.mean_logprob, abs=1e-4)


def test_bad_files_become_results_not_exceptions(captioner, tmp_path):
    good = make_image(tmp_path / "good.jpg", seed=1)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    results = captioner.caption_batch([empty, good, text])
    assert [r.error is None for r in results] == [False, True, False]
    assert "empty" in results[0].error and results[0].caption is None
    with pytest.raises(ImageLoadError):
        captioner.generate_caption(text)


def test_checkpoint_loads_on_cpu_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "captioner-checkpoint-v1", "decoder_state": Payload()}, evil)
    with pytest.raises(CheckpointMismatchError, match="cannot be read"):
        Captioner.from_checkpoint(evil)
    assert not marker.exists()


def test_inconsistent_checkpoints_are_refused_with_a_reason(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="vocabulary"):
        Captioner.from_checkpoint(make_checkpoint(tmp_path / "m.pt", vocab_size=len(WORDS) + 7))
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        Captioner.from_checkpoint(tmp_path / "missing.pt")


def test_model_id_follows_the_weights_not_the_file_name(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", seed=0)
    b = make_checkpoint(tmp_path / "b.pt", seed=1)
    os.link(a, tmp_path / "a_copy.pt")
    ids = [Captioner(load_checkpoint(p)).model_id for p in (a, tmp_path / "a_copy.pt", b)]
    assert ids[0] == ids[1] != ids[2]


def test_captioner_encodes_at_the_checkpoints_image_size(tmp_path):
    """A model trained on features at a non-native input size must caption at that size."""
    captioner = Captioner.from_checkpoint(make_checkpoint(tmp_path / "m.pt", image_size=96))
    assert captioner.preprocess.size == captioner.encoder.preprocess.size == 96
    image = make_image(tmp_path / "x.png", seed=1)
    tensor, _ = load_image_tensor(image, captioner.preprocess)
    assert tensor.shape == (3, 96, 96)
    assert captioner.generate_caption(image) == captioner.caption_batch([image])[0].caption


def weights_file(path: Path) -> Path:
    """A local encoder state-dict file (encoder.weights: <path>), as a user would point to."""
    torch.save(build_encoder(EncoderConfig("efficientnet_lite0", "none")).encoder_state_dict(), path)
    return path


def replace_weights(path: Path) -> None:
    """What replacing the weights file (or upgrading the weights package) does: other numbers."""
    state = torch.load(path, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.5
    torch.save(state, path)


def test_rebuilt_encoder_is_verified_against_the_checkpoints_fingerprint(tmp_path):
    weights = weights_file(tmp_path / "encoder.pt")
    model = make_checkpoint(tmp_path / "m.pt", weights=str(weights))
    recorded = load_checkpoint(model)["encoder"]["fingerprint"]
    trusted = Captioner.from_checkpoint(model)  # the encoder is the one it was trained with
    replace_weights(weights)
    actual = build_encoder(EncoderConfig("efficientnet_lite0", str(weights))).fingerprint
    assert actual != recorded
    with pytest.raises(CheckpointMismatchError) as refused:
        Captioner.from_checkpoint(model)
    message = str(refused.value)
    assert recorded in message and actual in message
    assert "allow_encoder_mismatch=True" in message and "--allow-encoder-mismatch" in message
    overridden = Captioner.from_checkpoint(model, allow_encoder_mismatch=True)
    # Resume keys on model_id: captions of the changed encoder must never pass for the old ones.
    assert overridden.model_id != trusted.model_id and actual in overridden.model_id
    assert (trusted.encoder_fingerprint, overridden.encoder_fingerprint) == (recorded, actual)


def test_finetuned_checkpoint_is_verified_by_the_weights_it_carries(tmp_path):
    weights = weights_file(tmp_path / "encoder.pt")
    model = make_checkpoint(tmp_path / "ft.pt", weights=str(weights), finetuned=True)
    image = make_image(tmp_path / "x.png", seed=2)
    before = Captioner.from_checkpoint(model)
    # Every encoder weight comes from the checkpoint, so a changed base file changes nothing.
    replace_weights(weights)
    after = Captioner.from_checkpoint(model)
    assert after.model_id == before.model_id
    assert after.generate_caption(image) == before.generate_caption(image)
    tampered = load_checkpoint(model)
    name = next(k for k, v in tampered["encoder_state"].items() if v.is_floating_point())
    tampered["encoder_state"][name] = tampered["encoder_state"][name] + 0.5
    with pytest.raises(CheckpointMismatchError, match="finetuned-"):
        Captioner(tampered)
    assert Captioner(tampered, allow_encoder_mismatch=True).model_id != before.model_id


def test_encoder_runs_at_the_precision_its_features_were_made_with(checkpoint, tmp_path):
    # no precision recorded (older checkpoint): fp32 on CPU. torch runtime: compared bit for bit below.
    fp32 = Captioner.from_checkpoint(checkpoint, runtime="torch")
    bf16 = Captioner.from_checkpoint(make_checkpoint(tmp_path / "bf16.pt", precision="bf16"))
    images = torch.stack([load_image_tensor(make_image(tmp_path / f"{i}.png", seed=i), fp32.preprocess)[0]
                          for i in range(2)]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = bf16.encoder(images).half().float()
    with torch.inference_mode():
        exact = fp32.encoder(images).half().float()
    assert (autocast - exact).abs().max() > 1e-3  # the two precisions give visibly different features
    assert torch.equal(bf16.encode(images), autocast)
    assert torch.equal(fp32.encode(images), exact)
    assert (bf16.settings["precision"], fp32.settings["precision"]) == ("bf16", "fp32")
    assert bf16.settings["runtime"] == "torch"  # auto: the exported runtimes run fp32 only
    with pytest.raises(CheckpointMismatchError, match="precision"):
        Captioner.from_checkpoint(make_checkpoint(tmp_path / "odd.pt", precision="fp8"))


def test_settings_name_every_decoding_choice(checkpoint):
    captioner = Captioner.from_checkpoint(checkpoint, beam_size=4, max_len=7, length_penalty=1, runtime="torch")
    assert captioner.settings == {"beam_size": 4, "max_len": 7, "length_penalty": 1.0, "precision": "fp32",
                                  "runtime": "torch"}
    blocking = Captioner.from_checkpoint(checkpoint, runtime="torch", no_repeat_ngram=4)
    assert blocking.settings["no_repeat_ngram"] == 4  # named only when set: older rows stay reusable
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        Captioner.from_checkpoint(checkpoint, no_repeat_ngram=-1)


@pytest.mark.parametrize("decoder_name", ["attention", "transformer"])
def test_spatial_decoder_captions_images_as_from_the_features_cache(tmp_path, decoder_name):
    """A spatial decoder's checkpoint rebuilds the same spatial level the features stage stored:
    captions from image files equal captions from the cached maps, and no <unk> is emitted."""
    from pipeline.decoders import DecoderConfig as Config, build_decoder
    from pipeline.feature_table import load_features
    from pipeline.features import FeaturesConfig, extract_features
    images = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    extract_features([(p.stem, p) for p in images], EncoderConfig("efficientnet_lite0", "none"),
                     FeaturesConfig(batch_size=3, num_workers=0, device="cpu", spatial="s16+s32"),
                     tmp_path / "f.parquet", tmp_path / "err.json")
    table = load_features(tmp_path / "f.parquet", grid=True)
    vocab = Vocab(WORDS)
    torch.manual_seed(0)
    decoder = build_decoder(Config(decoder=decoder_name, embed_size=16, hidden_size=32, attention_dim=16, heads=4,
                                   dropout=0.0), tuple(table.meta["grid_shape"]), len(vocab))
    with torch.no_grad():
        decoder.head.bias[vocab.unk_id] = 50.0  # the model would say <unk> everywhere if it could
    meta = table.meta
    info = {k: meta[k] for k in ("name", "weights", "fingerprint", "preprocess", "feature_dim", "grid_shape",
                                 "spatial", "precision", "features_id")}
    save_checkpoint(tmp_path / "m.pt", decoder_state=decoder.state_dict(), decoder=decoder.describe(),
                    vocab=vocab.to_list(), encoder=info, config={})
    captioner = Captioner.from_checkpoint(tmp_path / "m.pt", beam_size=2, max_len=6)
    assert captioner.spatial
    from_files = [captioner.generate_caption(p) for p in images]
    cached = torch.from_numpy(table.lookup([p.stem for p in images], spatial=True))
    from_cache = [vocab.decode(t) for t in captioner.decode_features(cached).tokens]
    assert from_files == from_cache
    assert all("<unk>" not in c for c in from_files)


def test_spatial_checkpoint_without_a_recorded_level_is_refused(tmp_path):
    from pipeline.decoders import DecoderConfig as Config, build_decoder
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "none"))
    vocab = Vocab(WORDS)
    decoder = build_decoder(Config(decoder="attention", embed_size=8, hidden_size=16, attention_dim=8),
                            (432, 7, 7), len(vocab))
    info = {"name": encoder.name, "weights": "none", "fingerprint": encoder.fingerprint,
            "preprocess": encoder.preprocess.to_dict(), "feature_dim": encoder.feature_dim}
    save_checkpoint(tmp_path / "m.pt", decoder_state=decoder.state_dict(), decoder=decoder.describe(),
                    vocab=vocab.to_list(), encoder=info, config={})
    with pytest.raises(CheckpointMismatchError, match="spatial"):
        Captioner.from_checkpoint(tmp_path / "m.pt")
    spec = {**decoder.describe(), "decoder": "lstm9000"}
    save_checkpoint(tmp_path / "u.pt", decoder_state=decoder.state_dict(), decoder=spec,
                    vocab=vocab.to_list(), encoder=info, config={})
    with pytest.raises(CheckpointMismatchError, match="train.decoder"):
        Captioner.from_checkpoint(tmp_path / "u.pt")
