"""Caption metrics: hand-computed BLEU / ROUGE-L / CIDEr-D cases, pinned pycocoevalcap figures
for a realistic example, the Java-free fallback against the Java reference, and diversity."""
from __future__ import annotations

import logging
import math
import subprocess
from pathlib import Path

import nltk
import pytest

from pipeline.evaluation import metrics, wordnet

# A realistic example: several references per image, capitals, punctuation and clitics, so
# the tokenizer matters. Both backends must tokenize it identically.
REFS = {
    "101": ["A dog's running across the green grass.", "a brown dog runs through a field",
            "The dog is playing outside, on the lawn."],
    "102": ["Two people walking down a city street.", "A man and a woman walk on the sidewalk."],
    "103": ["A plate of food with broccoli and rice.", "some food on a white plate",
            "A dinner plate holds rice, chicken and broccoli."],
    "104": ["A red bus parked next to the road.", "A double-decker bus isn't moving; it's parked."],
}
HYPS = {"101": "A dog running in the grass.", "102": "Two people walking down a street.",
        "103": "a plate of rice and broccoli", "104": "A red bus parked next to a road."}

# Pinned: what pycocoevalcap 1.2 (PTBTokenizer + Meteor 1.5 jar + Bleu/Rouge/Cider) printed
# for REFS/HYPS. Not derived independently; they guard against silent changes in how we call it.
COCO_PINNED = {"bleu_1": 0.8547333032963892, "bleu_2": 0.6838675784984869, "bleu_3": 0.5773662778317692,
               "bleu_4": 0.5022815618949082, "meteor": 0.3903499102234633, "rouge_l": 0.7945354562802426,
               "cider": 2.656443893221912}
# Pinned: nltk meteor_score (METEOR 1.5 alpha/beta/gamma) + Debian WordNet 3.0 on the same example.
NLTK_METEOR_PINNED = 0.37768033529864686


@pytest.fixture(scope="module")
def coco_report() -> metrics.MetricReport:
    # One Java run for the whole module: METEOR 1.5 loads its paraphrase table (~15 s) at start.
    return metrics.score_captions(REFS, HYPS, backend="coco")


@pytest.fixture(scope="module")
def python_report() -> metrics.MetricReport:
    return metrics.score_captions(REFS, HYPS, backend="python")


def test_identical_caption_scores_one():
    refs = {"a": ["a man rides a horse on the beach"]}
    report = metrics.score_captions(refs, {"a": "A man rides a horse on the beach."}, backend="python")
    for n in range(1, 5):  # pycocoevalcap smooths with 1e-9 in the denominator
        assert report.corpus[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert report.corpus["rouge_l"] == pytest.approx(1.0)


def test_bleu_and_rouge_by_hand_with_brevity_penalty():
    report = metrics.score_captions({"x": ["the cat sat on the mat"]}, {"x": "the cat on the mat"}, backend="python")
    # hyp 5 words, ref 6: BP = exp(1 - 6/5). Clipped unigram matches 5/5, bigrams 3/4
    # (the cat, on the, the mat), trigrams 1/3 (on the mat), no 4-gram.
    brevity = math.exp(1 - 6 / 5)
    assert report.corpus["bleu_1"] == pytest.approx(brevity * 1.0, rel=1e-6)
    assert report.corpus["bleu_2"] == pytest.approx(brevity * math.sqrt(1.0 * 3 / 4), rel=1e-6)
    assert report.corpus["bleu_3"] == pytest.approx(brevity * (1.0 * 3 / 4 * 1 / 3) ** (1 / 3), rel=1e-6)
    # ROUGE-L: LCS = 5, P = 5/5, R = 5/6, F_beta with beta = 1.2.
    precision, recall, beta2 = 1.0, 5 / 6, 1.2**2
    assert report.corpus["rouge_l"] == pytest.approx((1 + beta2) * precision * recall / (recall + beta2 * precision))


def test_bleu_clips_counts_and_uses_closest_reference_length():
    # 'the' x5 against refs holding at most 2 'the': clipped precision 2/5. Ref lengths 3 and 6:
    # the closest to 5 is 6 (not the shortest, 3), so BP = exp(1 - 6/5).
    refs = {"x": ["the cat sat", "the the dog ran far away"]}
    report = metrics.score_captions(refs, {"x": "the the the the the"}, backend="python")
    assert report.corpus["bleu_1"] == pytest.approx(math.exp(1 - 6 / 5) * 2 / 5, rel=1e-6)


def test_cider_d_is_ten_for_exact_matches_with_distinct_ngrams():
    # Each hyp equals its only reference and no n-gram occurs in two images: every n-gram has
    # the same IDF, the clipped cosine is 1 for n = 1..4 and the length penalty is exp(0), so
    # CIDEr-D = 10 * mean_n(1) = 10 (its maximum with one reference).
    refs = {"1": ["red kite flies high"], "2": ["small boat crosses lake"], "3": ["old man reads paper"]}
    hyps = {k: v[0] for k, v in refs.items()}
    report = metrics.score_captions(refs, hyps, backend="python")
    assert report.corpus["cider"] == pytest.approx(10.0)
    assert all(scores["cider"] == pytest.approx(10.0) for scores in report.per_image.values())
    assert metrics.quick_score(refs, hyps) == pytest.approx(10.0)


def test_coco_backend_matches_pinned_pycocoevalcap_figures(coco_report):
    assert coco_report.backend == "coco"
    assert list(coco_report.corpus) == list(metrics.CORPUS_METRICS)
    assert coco_report.corpus == pytest.approx(COCO_PINNED, rel=1e-9)
    assert set(coco_report.per_image) == set(HYPS)
    assert all(set(s) == set(metrics.PER_IMAGE_METRICS) for s in coco_report.per_image.values())
    # CIDEr-D corpus score is the mean of the per-image scores.
    mean_cider = sum(s["cider"] for s in coco_report.per_image.values()) / len(HYPS)
    assert coco_report.corpus["cider"] == pytest.approx(mean_cider)
    assert "Meteor 1.5" in coco_report.implementation["meteor"]
    assert "PTBTokenizer" in coco_report.implementation["tokenizer"]
    assert "spice" in coco_report.skipped and "offline" in coco_report.skipped["spice"]
    assert coco_report.to_dict()["scale"] == metrics.SCALE == "0-1 (x100 for paper tables)"


def test_python_backend_equals_coco_where_tokenization_agrees(coco_report, python_report):
    assert python_report.backend == "python"
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert python_report.corpus[name] == pytest.approx(coco_report.corpus[name], rel=1e-12), name
    assert python_report.corpus["meteor"] == pytest.approx(NLTK_METEOR_PINNED, rel=1e-9)
    assert "nltk" in python_report.implementation["meteor"]
    assert set(python_report.implementation) >= set(metrics.CORPUS_METRICS)


def test_python_tokenizer_agrees_with_java_ptb_tokenizer():
    captions = [
        "A dog's bone, isn't it?", "Two people -- walking; on a  street!", "It's red-and-white.",
        "CAN'T won't I'm they're we've you'll he'd", "kids (and adults) playing frisbee in the park...",
        'A "stop" sign at 5:30 p.m. near the U.S. border', "a 10,000-piece puzzle", "he said 'hello' to me",
        "a view from a plane's window .", "Teddy bears, toys & games", "   ",
    ]
    assert [metrics.ptb_like_tokenize(c) for c in captions] == metrics.ptb_tokenize_java(captions)
    assert metrics.ptb_like_tokenize("A dog's bone, isn't it?") == "a dog 's bone is n't it"


def test_quick_score_matches_full_scorers(python_report):
    assert metrics.quick_score(REFS, HYPS, "cider") == pytest.approx(python_report.corpus["cider"])
    assert metrics.quick_score(REFS, HYPS, "bleu_4") == pytest.approx(python_report.corpus["bleu_4"])
    with pytest.raises(ValueError, match="cider"):
        metrics.quick_score(REFS, HYPS, "meteor")


def test_hypothesis_without_references_is_rejected():
    with pytest.raises(ValueError, match="no reference captions.*'9'"):
        metrics.score_captions({"1": ["a cat"]}, {"1": "a cat", "9": "a dog"}, backend="python")
    with pytest.raises(ValueError, match="no reference"):
        metrics.quick_score({"1": []}, {"1": "a cat"})
    with pytest.raises(ValueError, match="empty"):
        metrics.score_captions({"1": ["a cat"]}, {}, backend="python")
    with pytest.raises(ValueError, match="auto, coco, python"):
        metrics.score_captions({"1": ["a cat"]}, {"1": "a cat"}, backend="java")
    with pytest.raises(TypeError, match="list of strings"):
        metrics.score_captions({"1": "a cat"}, {"1": "a cat"}, backend="python")


def test_auto_falls_back_to_python_without_java(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.metrics"):
        report = metrics.score_captions(REFS, HYPS, backend="auto")
    assert report.backend == "python"
    assert "java" in caplog.text


def test_missing_wordnet_reports_meteor_as_skipped(monkeypatch):
    monkeypatch.setattr(metrics, "load_wordnet", lambda: None)
    report = metrics.score_captions(REFS, HYPS, backend="python")
    assert "meteor" not in report.corpus
    assert all("meteor" not in s for s in report.per_image.values())
    assert "wordnet-base" in report.skipped["meteor"]
    assert report.corpus["cider"] > 0


def test_load_wordnet_none_when_nothing_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(nltk.data, "path", [])
    assert wordnet.load_wordnet(search_dirs=(str(tmp_path),), cache_dir=tmp_path) is None


def test_load_wordnet_lays_out_system_dict_for_nltk(monkeypatch, tmp_path):
    system_dict = Path("/usr/share/wordnet")  # where Debian's wordnet-base puts it
    if not (system_dict / "data.noun").is_file():
        pytest.fail(f"install WordNet: apt-get install -y {' '.join(wordnet.WORDNET_APT_PACKAGES)}")
    monkeypatch.setattr(nltk.data, "path", [])
    assert wordnet.load_wordnet(search_dirs=(str(system_dict),), cache_dir=tmp_path) is not None
    root = tmp_path / "nltk_data" / "corpora" / "wordnet"
    lexnames = (root / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    assert lexnames[5] == "05\tnoun.animal\t1"
    for name in wordnet._WORDNET_FILES:  # regular files: nltk refuses symlinks and hard links
        assert not (root / name).is_symlink() and (root / name).stat().st_nlink == 1
    assert str(tmp_path / "nltk_data") in nltk.data.path


def test_diversity_on_hand_made_captions():
    hyps = {"1": "A dog runs.", "2": "a dog runs", "3": "A cat sleeps on a mat"}
    stats = metrics.diversity(hyps, train_captions=["a dog runs."])
    # Tokenized: "a dog runs" twice and "a cat sleeps on a mat": 2 distinct of 3; words
    # {a, dog, runs, cat, sleeps, on, mat}; lengths 3, 3, 6; only the cat caption is new.
    assert stats == {"distinct_caption_share": pytest.approx(2 / 3), "vocab_used": 7,
                     "mean_length": pytest.approx(4.0), "novel_caption_share": pytest.approx(1 / 3)}
    assert "novel_caption_share" not in metrics.diversity(hyps)
    same_everywhere = metrics.diversity({str(i): "a man" for i in range(10)})
    assert same_everywhere["distinct_caption_share"] == pytest.approx(0.1)


def _require_java() -> None:
    # CI installs Java with `make setup`; without it the reference path would go untested.
    if not metrics.java_available():
        pytest.fail("java not found: run `make setup` (apt-get install -y default-jre-headless) to test the PTB path")


# Every character that the jar or Python's str.splitlines() treats as a line break.
LINE_BREAKS = ("\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def test_java_tokenizer_keeps_one_line_per_sentence_despite_line_breaks():
    _require_java()
    assert metrics.ptb_tokenize_java(["a dog\rruns", "a cat", "x"]) == ["a dog runs", "a cat", "x"]
    sentences = ["a dog\u2028runs", "a cat", "x"] + [f"a dog{b}runs" for b in LINE_BREAKS] + ["last"]
    expected = ["a dog runs", "a cat", "x"] + ["a dog runs"] * len(LINE_BREAKS) + ["last"]
    assert metrics.ptb_tokenize_java(sentences) == expected


def test_python_tokenizer_treats_line_breaks_as_spaces():
    assert [metrics.ptb_like_tokenize(s) for s in ["a dog\rruns", "a cat", "x"]] == ["a dog runs", "a cat", "x"]
    assert all(metrics.ptb_like_tokenize(f"a dog{b}runs") == "a dog runs" for b in LINE_BREAKS)
    refs = {"1": ["a brown dog runs on the grass"], "2": ["a cat"]}
    report = metrics.score_captions(refs, {"1": "a brown dog\u2028runs on\rthe grass", "2": "a cat"}, backend="python")
    assert report.per_image["1"]["bleu_4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("stdout", [b"a\nb\n", b"a\nb\nc\nd\n", b"a\nb\nc"],
                         ids=["too-few", "too-many", "unterminated"])
def test_java_tokenizer_output_line_count_must_match(monkeypatch, stdout):
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 0, stdout=stdout, stderr=b"")
    monkeypatch.setattr(metrics.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="3 sentences.*evaluate.backend"):
        metrics.ptb_tokenize_java(["a", "b", "c"])


# Contractions and colloquial forms the Stanford PTBTokenizer splits, with the
# punctuation the metrics keep; the last sentence also guards the jar's end-of-file quirk.
TRICKY = [
    "I cannot go, Cannot CANNOT", "we're gonna win, gotta go, wanna eat!", "Gimme that, lemme see.",
    "d'ye know 'tis true? 'Twas brillig", "more'n enough, rock 'n' roll", "'Tis the season; 'twasn't",
    "he's she'll they've I'm you'd can't won't isn't", "DON'T couldn't've there'd",
    "100% of $5 & a&b AT&T", "a [big] {red} (ball)", "gonna-be wannabe cannot's 'cannot'",
    "a*b x=y a~b a^b a|b", "the '90s 'em 'cause fish'n'chips x'tis", "you've",
]


def test_python_tokenizer_agrees_with_java_on_contractions_and_symbols():
    _require_java()
    assert [metrics.ptb_like_tokenize(s) for s in TRICKY] == metrics.ptb_tokenize_java(TRICKY)
    assert metrics.ptb_like_tokenize("I cannot, we're gonna") == "i can not we 're gon na"
    assert metrics.ptb_like_tokenize("'Tis more'n 50% (red)") == "'t is more 'n 50 % -lrb- red -rrb-"
