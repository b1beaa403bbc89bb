"""The decoder registry: every decoder on tiny random models (eval mode, seeded) honours the
contract pipeline.decoders.search relies on: teacher-forced forward == incremental start/step,
select-based batched beam search == per-image beam search, banned ids, describe/rebuild."""
from __future__ import annotations

import pytest
import torch

from pipeline.decoders import DECODERS, DecoderConfig, ShowTell, build_decoder, decoder_from_spec
from pipeline.decoders.search import decode
from pipeline.decoders.transformer import CACHE_START

PAD, START, END, UNK = 0, 1, 2, 3
VOCAB = 13
POOLED = (6,)
SPATIAL = (6, 3, 4)  # not square: a row/column mix-up in the transformer would break shapes
NAMES = sorted(DECODERS)

pytestmark = pytest.mark.usefixtures("single_thread")


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = DecoderConfig(decoder=name, embed_size=8, hidden_size=16, num_layers=2, dropout=0.2,
                        attention_dim=8, heads=2)
    model = build_decoder(cfg, SPATIAL if DECODERS[name].spatial else POOLED, VOCAB)
    with torch.no_grad():  # peaked, input-dependent distributions: no near-ties between beams
        model.head.weight.normal_(0.0, 1.5)
        model.head.bias.normal_(0.0, 0.5)
    return model.eval()


def features_for(model, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *model.feature_shape, generator=g)


def captions(n: int, length: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(UNK + 1, VOCAB, (n, length), generator=g)
    tokens[:, 0] = START
    tokens[0, -2:] = torch.tensor([END, PAD])  # a padded row as in training batches
    return tokens


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_spatial_flag(name):
    model = make(name)
    feats = features_for(model, 3)
    assert tuple(feats.shape[1:]) == (SPATIAL if model.spatial else POOLED)
    assert model(feats, captions(3, 7)).shape == (3, 6, VOCAB)
    state = model.start(feats)
    logp, _ = model.step(torch.full((3,), START), state)
    assert logp.shape == (3, VOCAB) and logp.dtype == torch.float32
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_shapes_the_output(name):
    """A layer left out of the forward pass (and of start/step alike, so their equality test
    cannot see it) would still be trained, saved and loaded: its weights must get a gradient."""
    model = make(name).train()
    feats, caps = features_for(model, 3), captions(3, 6)
    (model(feats, caps).square().sum() + model.aux_loss()).backward()
    unused = [key for key, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused


@pytest.mark.parametrize("name", NAMES)
def test_float16_features_are_cast(name):
    model = make(name)
    feats = features_for(model, 2).half()
    caps = captions(2, 5)
    assert torch.allclose(model(feats, caps), model(feats.float(), caps), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_incremental_decoding_equals_teacher_forcing(name):
    model = make(name)
    # Longer than the transformer's first key/value buffers (CACHE_START): they grow on the way.
    feats, caps = features_for(model, 4), captions(4, CACHE_START + 6)
    with torch.no_grad():
        forced = torch.log_softmax(model(feats, caps), dim=-1)
        state = model.start(feats)
        for t in range(caps.shape[1] - 1):
            logp, state = model.step(caps[:, t], state)
            assert torch.allclose(logp, forced[:, t], atol=1e-5), (name, t, (logp - forced[:, t]).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_select_repeats_and_reorders_rows(name):
    model = make(name)
    feats, caps = features_for(model, 3), captions(3, 4)
    with torch.no_grad():
        state = model.start(feats)
        for t in range(2):
            _, state = model.step(caps[:, t], state)
        rows = torch.tensor([2, 0, 0, 1])
        got, _ = model.step(caps[rows, 2], model.select(state, rows))
        want, _ = model.step(caps[:, 2], state)
    assert torch.allclose(got, want[rows], atol=1e-6)


def sharpened(model):
    """Sharper states and a state-dependent <end>: captions end at scattered steps."""
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.dim() >= 2 and not key.startswith("head"):
                p.mul_(3.0)
        model.head.weight[END] *= 3.0
        model.head.bias[END] = 0.0
    return model


@pytest.mark.parametrize("name", NAMES)
def test_batched_beam_equals_per_image_beam(name):
    model = sharpened(make(name))
    feats = features_for(model, 12)
    batched = decode(model, feats, START, END, max_len=7, beam_size=3, length_penalty=0.7)
    assert len({len(t) for t in batched.tokens}) >= 2  # the premise: beams end at different steps
    for i in range(len(feats)):
        single = decode(model, feats[i: i + 1], START, END, max_len=7, beam_size=3, length_penalty=0.7)
        assert single.tokens[0] == batched.tokens[i]
        assert single.logprob[0] == pytest.approx(batched.logprob[i], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beam", [1, 3])
def test_finished_images_leave_the_batch_without_changing_captions(name, beam):
    model = sharpened(make(name))
    with torch.no_grad():
        model.head.bias[END] = 1.0  # more captions end early, at scattered steps, in every decoder
    feats = features_for(model, 16)
    rows_per_step = []
    step = model.step

    def counting_step(tokens, state):
        rows_per_step.append(len(tokens))
        return step(tokens, state)

    model.step = counting_step
    batched = decode(model, feats, START, END, max_len=12, beam_size=beam, length_penalty=0.7)
    assert min(rows_per_step) < max(rows_per_step) == 16 * beam  # the premise: some images left early
    model.step = step
    for i in range(len(feats)):
        single = decode(model, feats[i: i + 1], START, END, max_len=12, beam_size=beam, length_penalty=0.7)
        assert single.tokens[0] == batched.tokens[i]
        assert single.logprob[0] == pytest.approx(batched.logprob[i], abs=1e-5)
        assert single.mean_logprob[0] == pytest.approx(batched.mean_logprob[i], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_banned_ids_are_never_emitted(name):
    model = make(name)
    with torch.no_grad():
        model.head.bias[UNK] = 30.0  # the model now prefers <unk> (then <start>) everywhere
        model.head.bias[START] = 20.0
    feats = features_for(model, 5)
    free = decode(model, feats, START, END, max_len=6)
    assert all(t and t[0] == UNK for t in free.tokens)  # the premise
    banned = (UNK, PAD, START)
    for beam in (1, 3):
        out = decode(model, feats, START, END, max_len=6, beam_size=beam, banned_ids=banned)
        assert all(w not in banned for t in out.tokens for w in t), out.tokens
        assert all(lp > float("-inf") for lp in out.logprob)
    with pytest.raises(ValueError, match="<end>"):
        decode(model, feats, START, END, banned_ids=(END,))


@pytest.mark.parametrize("name", NAMES)
def test_aux_loss(name):
    model = make(name).train()
    feats, caps = features_for(model, 3), captions(3, 6)
    logits = model(feats, caps)
    aux = model.aux_loss()
    assert aux.dim() == 0
    if name != "attention":
        assert aux.item() == 0.0
        return
    assert aux.item() > 0.0
    (logits.sum() + aux).backward()  # the penalty trains the attention
    assert model.att_score.grad.abs().sum() > 0
    # Padding steps are not attention given: extra <pad> columns leave the penalty unchanged.
    model.eval()
    model(feats, caps)
    before = model.aux_loss().item()
    model(feats, torch.cat([caps, torch.zeros(3, 3, dtype=torch.long)], dim=1))
    assert model.aux_loss().item() == pytest.approx(before, abs=1e-6)
    model.cfg.alpha_c = 0.0
    model(feats, caps)
    assert model.aux_loss().item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_describe_rebuilds_a_loadable_model(name):
    model = make(name)
    spec = model.describe()
    assert spec["decoder"] == name and spec["vocab_size"] == VOCAB
    assert spec["feature_shape"] == list(model.feature_shape)
    rebuilt = decoder_from_spec(spec)
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    feats, caps = features_for(model, 2), captions(2, 5)
    assert torch.equal(rebuilt.eval()(feats, caps), model(feats, caps))


def test_old_show_tell_checkpoint_loads():
    """Checkpoints from before the registry: spec without "decoder", the former parameter names."""
    old_spec = {"feature_dim": 6, "vocab_size": VOCAB, "embed_size": 8, "hidden_size": 16,
                "num_layers": 1, "dropout": 0.3}
    old_keys = {"image_embed.weight", "image_embed.bias", "image_bn.weight", "image_bn.bias",
                "image_bn.running_mean", "image_bn.running_var", "image_bn.num_batches_tracked",
                "word_embed.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
                "lstm.bias_hh_l0", "head.weight", "head.bias"}
    torch.manual_seed(0)
    old = ShowTell(6, VOCAB, DecoderConfig(8, 16, 1, 0.3)).eval()  # the former CaptionDecoder call
    assert set(old.state_dict()) == old_keys
    model = decoder_from_spec(old_spec)
    assert model.name == "show_tell" and model.describe()["feature_dim"] == 6
    model.load_state_dict(old.state_dict())
    feats, caps = torch.randn(2, 6), captions(2, 5)
    assert torch.equal(model.eval()(feats, caps), old(feats, caps))


def test_unknown_decoder_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"train\.decoder.*attention, show_tell, transformer"):
        build_decoder(DecoderConfig(decoder="lstm"), POOLED, VOCAB)
    with pytest.raises(ValueError, match="features.grid"):
        build_decoder(DecoderConfig(decoder="attention"), POOLED, VOCAB)
    with pytest.raises(ValueError, match="train.heads"):
        build_decoder(DecoderConfig(decoder="transformer", hidden_size=30, heads=4), SPATIAL, VOCAB)
    model = make("transformer")
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 6, 4, 3), captions(2, 4))


def test_manual_attention_matches_sdpa_values_and_gradients():
    """On a CPU the decoder attends with matmuls (faster there); it must be the same function."""
    import torch.nn.functional as F

    from pipeline.decoders.transformer import attend
    g = torch.Generator().manual_seed(0)
    for causal, n_keys in ((True, 6), (False, 9)):
        q, k, v = (torch.randn(3, 4, n, 8, generator=g, requires_grad=True) for n in (6, n_keys, n_keys))
        ours = attend(q, k, v, causal)
        grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
        assert torch.allclose(ours, ref, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads))
    with torch.no_grad():  # decoding on a CPU attends with matmuls too: one query against the cache
        q1 = q[:, :, -1:]
        assert torch.allclose(attend(q1, k, v, False), F.scaled_dot_product_attention(q1, k, v), atol=1e-5)


def test_dropout_keeps_the_expected_value_and_is_the_identity_in_eval_mode():
    from pipeline.decoders.base import Dropout
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    drop = Dropout(0.3)
    y = drop(x)
    p = 77 / 256  # 0.3 rounded to 1/256
    assert abs((y == 0).float().mean().item() - p) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(2.0 / (1 - p)))
    assert abs(y.mean().item() - 2.0) < 0.01
    for rate in (0.1, 0.5, 0.9):  # every byte value equally likely: the drop rate is p at any threshold
        assert abs((Dropout(rate)(x) == 0).float().mean().item() - round(rate * 256) / 256) < 0.005
    z = drop(torch.full((7, 3), 1.0))  # sizes that are not a multiple of 8
    assert z.shape == (7, 3) and set(z.unique().tolist()) <= {0.0, torch.tensor(1 / (1 - p)).item()}
    assert not torch.equal(drop(x), y)  # a new mask each call
    drop.eval()
    assert drop(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x)) and Dropout(0.0)(x) is x
