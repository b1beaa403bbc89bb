import pytest

from pipeline.data.vocab import SPECIALS, Vocab, VocabConfig, tokenize, unk_rate
from pipeline.data.vocabularies import build_vocab, load_vocab
from pipeline.evaluation.metrics import ptb_like_tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog, running on the beach!") == ["a", "dog", "running", "on", "the", "beach"]
    assert tokenize("there's a cat.") == ["there", "'s", "a", "cat"]


def test_build_vocab_uses_min_freq_and_is_deterministic():
    caps = ["a red circle", "a blue circle", "a red square"]
    vocab = build_vocab(caps, VocabConfig(min_freq=2))
    assert vocab.itos[: len(SPECIALS)] == list(SPECIALS)
    assert vocab.itos[len(SPECIALS):] == ["a", "circle", "red"]  # by count, then alphabetical
    assert build_vocab(list(reversed(caps)), VocabConfig(min_freq=2)).itos == vocab.itos


def test_encode_decode_roundtrip_with_unknown_and_truncation():
    vocab = build_vocab(["a red circle"] * 2, VocabConfig(min_freq=1))
    ids = vocab.encode("a green circle")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert ids[2] == vocab.unk_id
    assert vocab.decode(ids) == "a <unk> circle"
    assert len(vocab.encode("a red circle a red circle", max_len=4)) == 4
    assert vocab.decode([vocab.stoi["red"], vocab.end_id, vocab.stoi["circle"]]) == "red"


def test_unk_rate_and_save_load(tmp_path):
    vocab = build_vocab(["a red circle", "a red square"], VocabConfig(min_freq=2))
    assert unk_rate(vocab, ["a red star"]) == pytest.approx(1 / 3)
    vocab.save(tmp_path / "v.json")
    assert load_vocab(tmp_path / "v.json").itos == vocab.itos


def test_min_freq_too_high_is_a_clear_error():
    with pytest.raises(ValueError, match="min_freq"):
        build_vocab(["a cat"], VocabConfig(min_freq=5))


def test_tokenize_keeps_the_symbols_the_metrics_keep():
    assert tokenize("50% of $5 & a (red) ball") == ["50", "%", "of", "$", "5", "&", "a",
                                                    "-lrb-", "red", "-rrb-", "ball"]
    assert tokenize("I cannot, we're gonna") == ["i", "can", "not", "we", "'re", "gon", "na"]


def test_tokenize_splits_exactly_like_the_metrics_tokenizer():
    captions = ["A dog's bone, isn't it?", "kids [and adults] {x} at 5:30 p.m.", "Teddy bears, toys & games...",
                "100% of $5", "he said 'hello' -- twice", "'Tis gonna rain; d'ye know", "a 10,000-piece puzzle"]
    for caption in captions:
        assert tokenize(caption) == ptb_like_tokenize(caption).split(), caption


def test_decoded_caption_scores_like_its_source():
    # The metrics re-tokenize decoded captions: brackets come back readable and tokenize the same.
    caption = "A dog (big) can't eat 50% of [the] cake & cannot stop"
    vocab = build_vocab([caption], VocabConfig(min_freq=1))
    decoded = vocab.decode(vocab.encode(caption))
    assert "(" in decoded and "-lrb-" not in decoded
    assert ptb_like_tokenize(decoded) == ptb_like_tokenize(caption)
