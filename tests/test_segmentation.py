"""Japanese captions are split into words before sentencepiece learns and spells pieces
(vocab.japanese_words), so no piece spans a colour and a shape; decoding joins them again."""
import builtins

import pytest

from pipeline.data import segmentation
from pipeline.data.segmentation import join_words, split_words
from pipeline.data.vocab import VocabConfig
from pipeline.data.vocabularies import build_vocab, from_payload

CAPTIONS = ["大きい赤いひし形があります", "小さい青い三角の画像", "赤いひし形の左に青い三角があります",
            "二つの図形：赤いひし形と青い三角", "3つの図形の画像"] * 20


def words_of(captions):
    return {w for c in captions for w in split_words(c).split()}


def test_split_and_join_round_trip_and_leave_other_text_alone():
    assert split_words("小さい青い四角が上") == "小さい 青い 四角 が 上"
    assert split_words("<2ja> 赤い丸") == "<2ja> 赤い 丸"  # a language token stays whole
    for text in ["ein kleiner roter Kreis, links", "a red circle: 3 shapes", "红色的圆"]:  # no kana: unchanged
        assert split_words(text) == text and join_words(text) == text
    for caption in set(CAPTIONS):
        assert " " in split_words(caption) and join_words(split_words(caption)) == caption


@pytest.mark.parametrize("verbatim", [False, True])
def test_no_piece_spans_two_japanese_words_and_decoding_gives_the_caption_back(verbatim):
    words = words_of(CAPTIONS)
    split = build_vocab(CAPTIONS, VocabConfig(kind="sentencepiece", model_type="bpe", size=60, verbatim=verbatim))
    whole = build_vocab(CAPTIONS, VocabConfig(kind="sentencepiece", model_type="bpe", size=60, verbatim=verbatim,
                                              japanese_words=False))

    def spanning(vocab):
        pieces = [p.lstrip("▁") for p in vocab.itos[4:]]
        return [p for p in pieces if p and not any(p in w for w in words)]

    assert spanning(whole), "without word splitting BPE merges across words (the test could not fail)"
    assert spanning(split) == []
    # a pair never seen together is spelled with the pieces of its words
    assert [split.itos[i].lstrip("▁") for i in split.token_ids("赤い三角")] == ["赤い", "三角"]
    for caption in ["大きい赤いひし形があります", "3つの図形の画像", "赤い三角"]:
        ids = split.encode(caption)
        assert split.unk_id not in ids and split.decode(ids) == caption
    again = from_payload(split.payload())
    assert again.japanese_words and again.decode(again.encode(CAPTIONS[2])) == CAPTIONS[2]
    assert not from_payload(whole.payload()).japanese_words


def test_missing_janome_names_the_install_and_the_param(monkeypatch):
    real_import = builtins.__import__

    def no_janome(name, *args, **kwargs):
        if name.startswith("janome"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_janome)
    segmentation._janome.cache_clear()
    split_words.cache_clear()
    try:
        assert split_words("a red circle") == "a red circle"  # no Japanese: janome not needed
        with pytest.raises(segmentation.SegmenterMissing, match=r"pip install janome.*vocab.japanese_words: false"):
            split_words("赤い丸")
    finally:
        segmentation._janome.cache_clear()
        split_words.cache_clear()
