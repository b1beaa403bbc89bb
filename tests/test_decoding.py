"""Greedy and beam search on a decoder trained (in a few seconds) on synthetic features whose
captions depend on the feature, with 'greedy traps': a likely first word followed by a
spread-out second word, versus a less likely first word with a certain continuation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.decoders import DecoderConfig, ShowTell
from pipeline.decoders.search import beam_search, decode, greedy, repeated_ngram_mask

PAD, START, END = 0, 1, 2
VOCAB = 14
FEATURE_DIM = 8
# class -> [(probability, words)]; words are ids >= 3.
# Traps: greedy takes the 0.7 first word, then gets 0.175 at best (log ~ -1.74 in all);
# the 0.3 first word has a certain continuation (log ~ -1.2). Classes 0 and 2 mirror each
# other, so the decoder must read the feature to get either right.
SPREAD = (5, 6, 7, 8)
CAPTIONS = {
    0: [(0.7 / 4, [3, w]) for w in SPREAD] + [(0.3, [4, 9])],
    1: [(1.0, [10, 11, 12])],
    2: [(0.7 / 4, [4, w]) for w in SPREAD] + [(0.3, [3, 9, 10])],
    3: [(0.5, [11]), (0.5, [12, 13])],
}
TRAP_CLASSES = (0, 2)


def make_features(classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    features = 0.05 * torch.randn(len(classes), FEATURE_DIM, generator=generator)
    features[torch.arange(len(classes)), classes] += 1.0
    return features


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(single_thread) -> ShowTell:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classes = torch.randint(0, len(CAPTIONS), (3000,), generator=generator)
    tokens = torch.full((len(classes), 6), PAD, dtype=torch.long)
    for i, c in enumerate(classes.tolist()):
        weights = torch.tensor([w for w, _ in CAPTIONS[c]])
        words = CAPTIONS[c][torch.multinomial(weights, 1, generator=generator).item()][1]
        seq = [START, *words, END]
        tokens[i, : len(seq)] = torch.tensor(seq)
    features = make_features(classes, generator)
    model = ShowTell(FEATURE_DIM, VOCAB, DecoderConfig(embed_size=16, hidden_size=32, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(classes), (128,), generator=generator)
        logits = model(features[idx], tokens[idx])
        loss = loss_fn(logits.reshape(-1, VOCAB), tokens[idx, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    classes = torch.arange(len(CAPTIONS)).repeat(6)
    return make_features(classes, generator), classes


def teacher_forced_logprob(model: ShowTell, feature: torch.Tensor, words: list[int], ended: bool) -> float:
    """Independent scorer: log p(words [+ <end>] | feature) from one teacher-forced forward pass."""
    target = [*words, END] if ended else list(words)
    with torch.no_grad():
        logits = model(feature.unsqueeze(0), torch.tensor([[START, *target]]))
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    return float(logp[torch.arange(len(target)), torch.tensor(target)].sum())


def test_beam_logprob_at_least_greedy_and_escapes_traps(trained, test_batch):
    features, classes = test_batch
    g = decode(trained, features, START, END, max_len=8, beam_size=1)
    b = decode(trained, features, START, END, max_len=8, beam_size=3, length_penalty=0.0)
    for i, c in enumerate(classes.tolist()):
        assert b.logprob[i] >= g.logprob[i] - 1e-5, (i, c, g.tokens[i], b.tokens[i])
        if c in TRAP_CLASSES:  # the whole point of a beam: the certain continuation wins
            assert b.logprob[i] > g.logprob[i] + 0.3, (i, c, g.tokens[i], b.tokens[i])
            assert b.tokens[i][0] != g.tokens[i][0]


@pytest.mark.parametrize("beam_size,length_penalty", [(1, 0.0), (3, 0.0), (4, 0.7)])
def test_reported_scores_match_teacher_forcing(trained, test_batch, beam_size, length_penalty):
    features, _ = test_batch
    max_len = 8
    out = decode(trained, features, START, END, max_len=max_len, beam_size=beam_size,
                 length_penalty=length_penalty)
    for i, words in enumerate(out.tokens):
        ended = len(words) < max_len
        expected = teacher_forced_logprob(trained, features[i], words, ended)
        assert out.logprob[i] == pytest.approx(expected, abs=1e-4)
        assert out.mean_logprob[i] == pytest.approx(out.logprob[i] / (len(words) + ended), abs=1e-6)
        assert all(w not in (PAD, START, END) for w in words)


def test_scores_match_teacher_forcing_when_beams_finish_at_different_steps():
    """An untrained decoder with a likely <end>: beams finish at scattered steps and swap
    places, which exercises the bookkeeping of finished beams."""
    torch.manual_seed(3)
    model = ShowTell(FEATURE_DIM, 30, DecoderConfig(embed_size=16, hidden_size=32, dropout=0.0)).eval()
    with torch.no_grad():  # sharper, state-dependent word and <end> probabilities
        model.lstm.weight_ih_l0.mul_(3.0)
        model.lstm.weight_hh_l0.mul_(3.0)
        model.head.weight.mul_(3.0)
        model.head.weight[END] *= 20.0 / 3.0
        model.head.bias[END] = 0.0
    features = torch.randn(16, FEATURE_DIM, generator=torch.Generator().manual_seed(4))
    out = decode(model, features, START, END, max_len=10, beam_size=4, length_penalty=0.7)
    lengths = {len(t) for t in out.tokens}
    assert len(lengths) >= 3, lengths  # the premise: captions of many lengths
    for i, words in enumerate(out.tokens):
        expected = teacher_forced_logprob(model, features[i], words, ended=len(words) < 10)
        assert out.logprob[i] == pytest.approx(expected, abs=1e-4)


def test_batched_beam_equals_per_image_beam(trained, test_batch):
    features, _ = test_batch
    batched = decode(trained, features, START, END, max_len=8, beam_size=3, length_penalty=0.7)
    for i in range(len(features)):
        single = decode(trained, features[i: i + 1], START, END, max_len=8, beam_size=3, length_penalty=0.7)
        assert single.tokens[0] == batched.tokens[i]
        assert single.logprob[0] == pytest.approx(batched.logprob[i], abs=1e-5)


def naive_greedy(model: ShowTell, feature: torch.Tensor, max_len: int) -> tuple[list[int], float]:
    """The seeds' loop: one image, one token at a time, .item() per step."""
    with torch.no_grad():
        _, state = model.lstm(model.image_bn(model.image_embed(feature.unsqueeze(0))).unsqueeze(1))
        word, words, total = START, [], 0.0
        for _ in range(max_len):
            out, state = model.lstm(model.word_embed(torch.tensor([[word]])), state)
            logp = torch.log_softmax(model.head(out[0, 0]), dim=-1)
            word = int(logp.argmax().item())
            total += float(logp[word].item())
            if word == END:
                break
            words.append(word)
    return words, total


def test_greedy_equals_naive_loop(trained, test_batch):
    features, _ = test_batch
    out = decode(trained, features, START, END, max_len=8, beam_size=1)
    for i in range(len(features)):
        words, total = naive_greedy(trained, features[i], 8)
        assert out.tokens[i] == words
        assert out.logprob[i] == pytest.approx(total, abs=1e-5)


def test_beam_of_one_is_greedy(trained, test_batch):
    features, _ = test_batch
    g = greedy(trained, features, START, END, 8)
    b = beam_search(trained, features, START, END, 8, beam_size=1, length_penalty=0.0)
    assert b.tokens == g.tokens
    assert b.logprob == pytest.approx(g.logprob, abs=1e-5)


def test_max_len_truncates_and_bad_arguments_fail(trained, test_batch):
    features, _ = test_batch
    for beam in (1, 3):
        out = decode(trained, features, START, END, max_len=1, beam_size=beam)
        assert all(len(t) <= 1 for t in out.tokens)
    assert decode(trained, features[:0], START, END, beam_size=3).tokens == []
    with pytest.raises(ValueError, match="beam_size"):
        decode(trained, features, START, END, beam_size=0)


def test_repeated_ngram_mask_blocks_the_word_that_would_repeat_an_ngram():
    history = torch.tensor([[5, 6, 7, 5, 6], [3, 4, 3, 4, 3]])
    blocked = {n: [set(row.nonzero().squeeze(1).tolist()) for row in repeated_ngram_mask(history, n, 10)]
               for n in (1, 2, 3, 4)}
    assert blocked[1] == [{5, 6, 7}, {3, 4}]  # any word already used
    assert blocked[2] == [{7}, {4}]  # "6 7" and "3 4" already there
    assert blocked[3] == [{7}, {4}]  # "5 6 7" and "4 3 4"
    assert blocked[4] == [set(), {4}]  # "3 4 3 4" only in the second row
    assert repeated_ngram_mask(history[:, :1], 3, 10) is None  # too short to repeat anything


def repeated_ngrams(words: list[int], n: int) -> bool:
    grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_no_repeat_ngram_leaves_no_repeated_ngram_and_keeps_the_model_scores(beam_size):
    """An untrained decoder that rarely ends and favours a few words: its captions repeat
    themselves; with no_repeat_ngram n, none repeats n words, and each caption's score is
    still the model's own log-probability of it."""
    torch.manual_seed(5)
    model = ShowTell(FEATURE_DIM, VOCAB, DecoderConfig(embed_size=16, hidden_size=32, dropout=0.0)).eval()
    with torch.no_grad():
        model.head.bias[END] = -10.0
        model.head.bias[3:6] += 3.0  # three favourite words
    features = torch.randn(6, FEATURE_DIM, generator=torch.Generator().manual_seed(6))
    plain = decode(model, features, START, END, max_len=10, beam_size=beam_size)
    assert decode(model, features, START, END, max_len=10, beam_size=beam_size, no_repeat_ngram=0) == plain
    for n in (1, 2, 3):
        assert any(repeated_ngrams(words, n) for words in plain.tokens)  # the premise
        out = decode(model, features, START, END, max_len=10, beam_size=beam_size, no_repeat_ngram=n)
        assert not any(repeated_ngrams(words, n) for words in out.tokens), (n, out.tokens)
        for i, words in enumerate(out.tokens):
            expected = teacher_forced_logprob(model, features[i], words, ended=len(words) < 10)
            assert out.logprob[i] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        decode(model, features, START, END, no_repeat_ngram=-1)
