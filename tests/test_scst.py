"""SCST: the CIDEr-D reward against pycocoevalcap (what pipeline.evaluation.metrics scores with), sampling
bookkeeping, the leave-one-out baseline, gradients, and a few SCST steps raising the reward,
on a tiny GRU decoder written here and on every registered decoder."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.data.vocab import Vocab
from pipeline.decoders import DECODERS, DecoderConfig, build_decoder
from pipeline.evaluation import metrics
from pipeline.training.cider_d import CiderD, reference_tokens
from pipeline.training.scst import (greedy_reward, leave_one_out_baseline, sample, sample_rewards, sequence_log_probs,
                                    scst_epoch, scst_loss)

pytestmark = pytest.mark.usefixtures("single_thread")

PAD, START, END, UNK = 0, 1, 2, 3
REFS = {
    "0": ["a small red circle on a white background", "a red circle", "one small red circle left of nothing"],
    "1": ["two blue squares in a row", "blue squares side by side", "a pair of blue squares"],
    "2": ["a green triangle above a red circle", "green triangle and red circle", "a triangle over a circle"],
    "3": ["a yellow star", "one yellow star in the middle", "a small yellow star on a grey background"],
    "4": ["a red circle and a red circle", "two red circles", "red circles in a column"],
}
HYPS = {"0": "a red circle", "1": "blue blue blue blue squares", "2": "a green triangle above a red circle",
        "3": "star", "4": "a purple hexagon nowhere"}


def words(text: str) -> list[str]:
    return text.split()


class TinyGRU(nn.Module):
    """The decoder interface in a few lines: pooled feature -> h0, GRU cell over words."""
    spatial = False

    def __init__(self, feature_dim: int, vocab_size: int, hidden: int = 32):
        super().__init__()
        self.init = nn.Linear(feature_dim, hidden)
        self.embed = nn.Embedding(vocab_size, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, features, captions):
        h, outs = self.start(features), []
        for t in range(captions.shape[1] - 1):
            h = self.cell(self.embed(captions[:, t]), h)
            outs.append(self.head(h))
        return torch.stack(outs, 1)

    def start(self, features):
        return torch.tanh(self.init(features.float()))

    def step(self, tokens, h):
        h = self.cell(self.embed(tokens), h)
        return torch.log_softmax(self.head(h), -1), h

    def select(self, h, rows):
        return h.index_select(0, rows)

    def aux_loss(self):
        return self.head.weight.new_zeros(())


def teacher_forced_logp(decoder, features, tokens, mask, n_samples, banned=()):
    """log p of given samples recomputed in one forward pass, banning as sample() does."""
    captions = torch.cat([torch.full((len(tokens), 1), START), tokens], 1)
    logits = decoder(features.repeat_interleave(n_samples, 0), captions)
    logp = torch.log_softmax(logits.float(), -1)
    if banned:
        logp = torch.log_softmax(logp.index_fill(2, torch.tensor(banned), float("-inf")), -1)
    # Masked steps may hold pad, which a ban sends to -inf: gather a valid id there instead.
    picked = logp.gather(2, torch.where(mask, tokens, END).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked))


# --- the reward is the real metric -----------------------------------------------------------
def test_cider_d_matches_pycocoevalcap_per_image_and_quick_score():
    # pipeline.evaluation.metrics scores CIDEr-D with pycocoevalcap, idf from the scored set's own
    # references: build our scorer's document frequencies from the same set.
    ids = list(REFS)
    scorer = CiderD([[words(r) for r in REFS[i]] for i in ids])
    gts = {i: REFS[i] for i in ids}
    _, per_image = metrics._pycocoevalcap_scores(gts, {i: [HYPS[i]] for i in ids})
    ours = [scorer.score(words(HYPS[i]), [words(r) for r in REFS[i]]) for i in ids]
    for i, value in zip(ids, ours):
        assert value == pytest.approx(per_image[i]["cider"], abs=1e-6)
    assert len(set(round(v, 3) for v in ours)) == len(ours)  # a real spread, not all 0 or equal
    assert sum(ours) / len(ours) == pytest.approx(metrics.quick_score(REFS, HYPS, "cider"), abs=1e-6)


def test_end_is_counted_and_penalises_truncated_captions():
    ids = list(REFS)
    scorer = CiderD([[words(r) for r in REFS[i]] for i in ids], end="<end>")
    # Equal to pycocoevalcap when "<end>" is a word of every reference and of the candidate.
    gts = {i: [r + " <end>" for r in REFS[i]] for i in ids}
    _, per_image = metrics._pycocoevalcap_scores(gts, {i: [HYPS[i] + " <end>"] for i in ids})
    for i in ids:
        ours = scorer.score([*words(HYPS[i]), "<end>"], [words(r) for r in REFS[i]])
        assert ours == pytest.approx(per_image[i]["cider"], abs=1e-6)
    refs = [words(r) for r in REFS["0"]]
    finished = scorer.score(["a", "red", "circle", "<end>"], refs)
    assert scorer.score(["a", "red", "circle"], refs) < finished - 0.5  # cut off by max_len
    assert scorer.score(["a", "small", "red", "<end>"], refs) < finished - 0.5  # stops mid-phrase


def test_word_ids_score_like_words_and_unk_matches_nothing():
    vocab = Vocab(["a", "red", "circle", "blue", "square"])
    captions = [["a red circle", "a red circle on grass"], ["a blue square", "blue square"]]
    refs = reference_tokens(captions, vocab)
    assert refs[0][1] == [vocab.stoi["a"], vocab.stoi["red"], vocab.stoi["circle"], "on", "grass"]
    by_id = CiderD(refs, end=vocab.end_id)
    by_word = CiderD([[c.split() for c in caps] for caps in captions], end="<end>")
    ids = [vocab.stoi[w] for w in ("a", "red", "circle")] + [vocab.end_id]
    assert by_id.score(ids, refs[0]) == pytest.approx(by_word.score(["a", "red", "circle", "<end>"],
                                                                    [c.split() for c in captions[0]]))
    # <unk> for "grass" earns what any absent word earns, i.e. no match with the OOV word.
    with_unk = [*ids[:3], vocab.unk_id, vocab.end_id]
    with_other = [*ids[:3], vocab.stoi["blue"], vocab.end_id]
    assert by_id.score(with_unk, refs[0]) < by_word.score(["a", "red", "circle", "grass", "<end>"],
                                                          [c.split() for c in captions[0]])
    assert by_id.score(with_unk, refs[0]) == pytest.approx(
        by_word.score(["a", "red", "circle", "zebra", "<end>"], [c.split() for c in captions[0]]))
    assert by_id.score(with_other, refs[0]) > 0


def test_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    expected = torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]])
    assert torch.allclose(leave_one_out_baseline(rewards), expected)
    with pytest.raises(ValueError, match="n_samples"):
        leave_one_out_baseline(torch.ones(2, 1))


# --- sampling ---------------------------------------------------------------------------------
def biased_gru(vocab_size: int, bias: dict[int, float], seed: int = 0) -> TinyGRU:
    torch.manual_seed(seed)
    decoder = TinyGRU(4, vocab_size)
    with torch.no_grad():
        for token, value in bias.items():
            decoder.head.bias[token] = value
    return decoder


def test_sample_stops_at_end_pads_after_and_truncates_at_max_len():
    features = torch.randn(3, 4)
    never_ends = biased_gru(8, {END: -50.0})
    tokens, logp, mask = sample(never_ends, features, START, END, max_len=5, n_samples=2,
                                generator=torch.Generator().manual_seed(0))
    assert tokens.shape == logp.shape == mask.shape == (6, 5)
    assert mask.all() and not (tokens == END).any()
    ends_soon = biased_gru(8, {END: 2.0}, seed=1)
    tokens, logp, mask = sample(ends_soon, features, START, END, max_len=12, n_samples=4,
                                generator=torch.Generator().manual_seed(0))
    lengths = mask.sum(1)
    rows = torch.arange(len(tokens))
    assert tokens.shape[1] == lengths.max() < 12  # stops once every sample has ended
    assert (tokens[rows, lengths - 1] == END).all()  # the mask includes <end>
    assert ((tokens == END).sum(1) == 1).all()
    assert (tokens[~mask] == PAD).all() and (logp[~mask] == 0).all() and (logp[mask] < 0).all()


def test_banned_ids_are_never_sampled_and_their_mass_is_renormalised():
    decoder = biased_gru(10, {5: 6.0, END: 1.0})
    features = torch.randn(4, 4)
    tokens, _, mask = sample(decoder, features, START, END, 6, 8, generator=torch.Generator().manual_seed(0))
    assert (tokens[mask] == 5).float().mean() > 0.5  # without a ban the favourite dominates
    banned = (PAD, START, 5)
    tokens, logp, mask = sample(decoder, features, START, END, 6, 8, banned_ids=banned,
                                generator=torch.Generator().manual_seed(0))
    assert not torch.isin(tokens[mask], torch.tensor(banned)).any()
    assert torch.allclose(logp, teacher_forced_logp(decoder, features, tokens, mask, 8, banned), atol=1e-5)


def test_gradients_flow_only_through_the_sampled_log_probs():
    decoder = biased_gru(9, {END: 0.5})
    features = torch.randn(3, 4)
    refs = [[[4, 5, 6], [4, 7]], [[5, 6, 8]], [[8, 8, 4], [6]]]
    scorer = CiderD(refs, end=END)
    banned = (PAD, START)
    loss, stats = scst_loss(decoder, features, refs, scorer, START, END, max_len=6, n_samples=4,
                            banned_ids=banned, generator=torch.Generator().manual_seed(7))
    params = list(decoder.parameters())
    grads = torch.autograd.grad(loss, params)
    # The same samples again, their log-probs recomputed by teacher forcing, rewards as constants.
    with torch.no_grad():
        tokens, _, mask = sample(decoder, features, START, END, 6, 4, banned, torch.Generator().manual_seed(7))
    rewards = sample_rewards(scorer, tokens, mask, refs, 4)
    advantage = (rewards - leave_one_out_baseline(rewards)).reshape(-1)
    assert advantage.abs().sum() > 0
    expected = -(advantage * teacher_forced_logp(decoder, features, tokens, mask, 4, banned).sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert stats["reward"] == pytest.approx(rewards.mean().item())
    assert stats["sample_length"] == pytest.approx(mask.sum(1).float().mean().item())
    for got, want in zip(grads, torch.autograd.grad(expected, params)):
        assert torch.allclose(got, want, atol=1e-5)


# --- SCST raises the reward -------------------------------------------------------------------
COLOURS, SHAPES = ["red", "blue", "green", "yellow"], ["circle", "square", "triangle", "star"]


def tiny_task():
    vocab = Vocab(["a", "small", "big", *COLOURS, *SHAPES])
    captions = [[f"a {c} {s}", f"a small {c} {s}", f"{c} {s}"] for c, s in zip(COLOURS, reversed(SHAPES))]
    refs = reference_tokens(captions, vocab)
    return vocab, refs, CiderD(refs, end=vocab.end_id), torch.eye(4)


def test_scst_steps_raise_greedy_and_sampled_reward():
    vocab, refs, scorer, features = tiny_task()
    torch.manual_seed(0)
    decoder = TinyGRU(4, len(vocab))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    args = dict(start_id=vocab.start_id, end_id=vocab.end_id, max_len=6)
    banned = (vocab.pad_id, vocab.start_id, vocab.unk_id)
    before = greedy_reward(decoder, features, refs, scorer, banned_ids=banned, **args)
    sampled = [scst_epoch(decoder, optimizer, features, refs, scorer, n_samples=6, batch_size=4,
                          banned_ids=banned, generator=generator,
                          **args)["reward"] for _ in range(60)]
    after = greedy_reward(decoder, features, refs, scorer, banned_ids=banned, **args)
    # CIDEr-D starts near 0 here; seed 0 ends around 4 (greedy and sampled): keep a wide margin.
    assert sum(sampled[-10:]) / 10 > sum(sampled[:10]) / 10 + 2.0
    assert after > before + 2.0
    assert decoder.training  # scst_epoch (eval inside) and greedy_reward restored the mode


# --- every registered decoder -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_registered_decoders_sample_consistently_and_train(name):
    vocab, refs, scorer, _ = tiny_task()
    refs = refs + refs[:1]  # 5 images: with batch_size 2 the lone last image joins a batch
    torch.manual_seed(0)
    cfg = DecoderConfig(decoder=name, embed_size=8, hidden_size=16, attention_dim=8, heads=2, dropout=0.1)
    shape = (6, 2, 2) if DECODERS[name].spatial else (6,)
    decoder = build_decoder(cfg, shape, len(vocab))
    features = torch.randn(5, *shape).half()  # the cache stores float16
    decoder.eval()  # no dropout: step() and forward() must give the same log-probs
    with torch.no_grad():
        tokens, logp, mask = sample(decoder, features, vocab.start_id, vocab.end_id, 5, 3,
                                    generator=torch.Generator().manual_seed(0))
        assert torch.allclose(logp, teacher_forced_logp(decoder, features, tokens, mask, 3), atol=1e-4)
        assert torch.allclose(logp, sequence_log_probs(decoder, features, tokens, mask, 3, vocab.start_id,
                                                       vocab.end_id), atol=1e-4)
        # forward_rows encodes each image once for its samples: same logits as repeating the images.
        rows = torch.tensor([0, 0, 2, 4, 4])
        captions = torch.cat([torch.full((5, 1), vocab.start_id), tokens[:5]], 1)
        assert torch.allclose(decoder.forward_rows(features, captions, rows), decoder(features[rows], captions),
                              atol=1e-5)
    decoder.train()  # scst_epoch samples in eval mode and puts the mode back
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    out = scst_epoch(decoder, optimizer, features, refs, scorer, start_id=vocab.start_id,
                     end_id=vocab.end_id, max_len=5, n_samples=3, batch_size=2,
                     generator=torch.Generator().manual_seed(0))
    assert out["steps"] == 2 and out["images"] == 5 and decoder.training
    assert all(torch.isfinite(torch.tensor(v)) for v in (out["loss"], out["reward"], out["baseline"]))
    assert not torch.equal(before["head.weight"], decoder.state_dict()["head.weight"])


def test_bad_arguments_name_the_fix():
    _, refs, scorer, features = tiny_task()
    decoder = TinyGRU(4, 20)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        scst_loss(decoder, features, refs, scorer, START, END, 5, n_samples=1)
    with pytest.raises(ValueError, match="end=vocab.end_id"):
        scst_loss(decoder, features, refs, scorer, START, 9, 5)
    with pytest.raises(ValueError, match="reference lists"):
        scst_loss(decoder, features, refs[:2], scorer, START, END, 5)
    with pytest.raises(ValueError, match="max_len"):
        sample(decoder, features, START, END, 0, 2)
    with pytest.raises(ValueError, match="banned_ids"):
        sample(decoder, features, START, END, 5, 2, banned_ids=(UNK, END))
