"""Caption metrics computed the way captioning papers compute them.

backend "coco" is the reference path (coco-caption / pycocoevalcap): Stanford PTBTokenizer
and METEOR 1.5 run in Java, BLEU / ROUGE-L / CIDEr-D are pycocoevalcap's own Python scorers.
backend "python" needs no Java: a regex approximation of the PTB tokenizer, the same
pycocoevalcap BLEU / ROUGE-L / CIDEr-D, and nltk's METEOR with WordNet (a different METEOR
implementation, so its figure is labelled as such and not comparable digit-for-digit).

Every figure is a 0-1 fraction exactly as pycocoevalcap returns it (CIDEr-D on its native
scale, ~0-10); papers print these x100. SPICE is never computed (see SPICE_SKIP_REASON).

The PTB tokenizer and METEOR 1.5 are English's. Captions in another language are split by that
language's tokenizer (pipeline.data.tokenizers.score_tokens: Unicode words, or characters for
Japanese and Chinese) and scored by the same Python BLEU / ROUGE-L / CIDEr-D, without METEOR.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from pipeline.data.tokenizers import ENGLISH, TOKENIZERS, score_tokens, scoring_tokenizer
from pipeline.data.vocab import one_line, ptb_tokens
from pipeline.evaluation.wordnet import WORDNET_APT_PACKAGES, load_wordnet

logger = logging.getLogger(__name__)

SCALE = "0-1 (x100 for paper tables)"
CORPUS_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
PER_IMAGE_METRICS = ("bleu_4", "meteor", "rouge_l", "cider")
BACKENDS = ("auto", "coco", "python")
QUICK_METRICS = ("cider", "bleu_4")
# METEOR 1.5's English alpha/beta/gamma (the jar prints "Parameters: 0.85 0.2 0.6 0.75")
# instead of nltk's 2005 defaults (alpha=0.9, beta=3, gamma=0.5): on 300 synthetic captions this moved nltk's mean from 0.44 to
# 0.235 against the jar's 0.220 (per-image correlation 0.91). Still no paraphrase table and
# no function-word weighting (delta), so the figure stays labelled as nltk's.
NLTK_METEOR_PARAMS = {"alpha": 0.85, "beta": 0.2, "gamma": 0.6}
SPICE_SKIP_REASON = (
    "not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP models at first use, "
    "which is impossible offline; no SPICE figure is reported rather than an estimate"
)

@dataclasses.dataclass
class MetricReport:
    corpus: dict[str, float]  # CORPUS_METRICS that could be computed, 0-1 scale
    per_image: dict[str, dict[str, float]]  # image id -> PER_IMAGE_METRICS
    implementation: dict[str, str]  # metric (and "tokenizer") -> code that produced it
    skipped: dict[str, str]  # metric -> why it has no figure
    backend: str
    scale: str = SCALE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def score_captions(
    references: dict[str, list[str]], hypotheses: dict[str, str], backend: str = "auto", meteor=None,
    language: str = ENGLISH,
) -> MetricReport:
    """Score one generated caption per image against that image's reference captions.
    `meteor`: a running jar from `meteor_jar()`, to pay the JVM start (10-30 s) once for many calls.
    `language`: the captions' language; other than English, they are split by its tokenizer in
    Python (backend "python" whatever was asked: no Java tool applies) and METEOR is skipped."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown metrics backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    ids = _check_inputs(references, hypotheses)
    english = scoring_tokenizer(language) == "ptb"
    if not english:
        backend = "python"
    elif backend == "auto":
        backend = "coco" if java_available() else "python"
        if backend == "python":
            logger.warning("java not found or not working: scoring with the pure-Python backend, "
                           "whose tokenizer and METEOR differ from the published coco-caption code")
    started = time.perf_counter()
    sentences = [hypotheses[i] for i in ids] + [r for i in ids for r in references[i]]
    if backend == "coco":
        tokens = ptb_tokenize_java(sentences)
    else:
        tokens = [tokenized(s, language) for s in sentences]
    res = {i: [tokens[k]] for k, i in enumerate(ids)}
    gts, pos = {}, len(ids)
    for i in ids:
        gts[i] = tokens[pos : pos + len(references[i])]
        pos += len(references[i])

    corpus, per_image = _pycocoevalcap_scores(gts, res)
    skipped = {"spice": SPICE_SKIP_REASON}
    implementation = {
        **{f"bleu_{n}": "pycocoevalcap Bleu (python, 'closest' reference length)" for n in range(1, 5)},
        "rouge_l": "pycocoevalcap Rouge (python, LCS F-measure, beta=1.2)",
        "cider": "pycocoevalcap Cider = CIDEr-D (python, sigma=6, clipped, IDF from these references)",
    }
    if not english:
        implementation["tokenizer"] = f"{TOKENIZERS[scoring_tokenizer(language)]} (python, language {language})"
        skipped["meteor"] = f"not computed for {language}: METEOR 1.5 and its resources here are English only"
        meteor = None
    elif backend == "coco":
        implementation["tokenizer"] = "pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, java)"
        implementation["meteor"] = "pycocoevalcap Meteor 1.5 (java jar, -l en -norm; corpus from pooled stats)"
        meteor, meteor_per_image = _meteor_java(gts, res, meteor)
    else:
        implementation["tokenizer"] = "PTB-like python regex (lowercase, split clitics, drop PTB punctuation)"
        meteor, meteor_per_image = _meteor_nltk(gts, res)
        if meteor is None:
            skipped["meteor"] = (
                "WordNet not found, so nltk METEOR cannot run: install the Debian packages "
                f"(apt-get install -y {' '.join(WORDNET_APT_PACKAGES)}), "
                "put NLTK's wordnet corpus under an nltk_data path, or use backend='coco' with java"
            )
        else:
            implementation["meteor"] = ("nltk meteor_score + WordNet 3.0 (python; METEOR 1.5 en alpha/beta/gamma, "
                                        "no paraphrases; corpus = mean per image)")
    if meteor is not None:
        corpus["meteor"] = meteor
        for i, value in zip(ids, meteor_per_image):
            per_image[i]["meteor"] = value
    corpus = {name: corpus[name] for name in CORPUS_METRICS if name in corpus}
    logger.info("scored %d captions with the %s backend in %.1f s", len(ids), backend,
                time.perf_counter() - started)
    return MetricReport(corpus, per_image, implementation, skipped, backend)


def quick_score(references: dict[str, list[str]], hypotheses: dict[str, str], metric: str = "cider",
                language: str = ENGLISH) -> float:
    """Fast Java-free CIDEr-D or BLEU-4 for picking checkpoints during training. Close to,
    but not the figure to publish: that is score_captions(backend='coco'). Text split as
    score_captions splits `language`."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if metric not in QUICK_METRICS:
        raise ValueError(f"quick_score metric must be one of {', '.join(QUICK_METRICS)}, got {metric!r}")
    ids = _check_inputs(references, hypotheses)
    res = {i: [tokenized(hypotheses[i], language)] for i in ids}
    gts = {i: [tokenized(r, language) for r in references[i]] for i in ids}
    if metric == "cider":
        return float(Cider().compute_score(gts, res)[0])
    return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def diversity(hypotheses: dict[str, str], train_captions: list[str] | None = None, language: str = ENGLISH) -> dict:
    """Guards against a model that says the same thing for every image. Captions are
    compared after tokenization (as `language` is split), so 'A dog.' and 'a dog' count as the
    same caption."""
    if not hypotheses:
        raise ValueError("diversity() needs at least one generated caption")
    captions = [tokenized(c, language) for c in hypotheses.values()]
    stats = {
        "distinct_caption_share": len(set(captions)) / len(captions),
        "vocab_used": len({w for c in captions for w in c.split()}),
        "mean_length": sum(len(c.split()) for c in captions) / len(captions),
    }
    if train_captions is not None:
        seen = {tokenized(c, language) for c in train_captions}
        stats["novel_caption_share"] = sum(c not in seen for c in captions) / len(captions)
    return stats


def tokenized(sentence: str, language: str = ENGLISH) -> str:
    """The sentence's scoring tokens in `language` joined by spaces, as the scorers read them
    (English: ptb_like_tokenize)."""
    return " ".join(score_tokens(sentence, language))


def ptb_like_tokenize(sentence: str) -> str:
    """Pure-Python stand-in for `PTBTokenizer -preserveLines -lowerCase` followed by
    pycocoevalcap's punctuation filter (pipeline.data.vocab.ptb_tokens, which the vocabulary uses too)."""
    return " ".join(ptb_tokens(sentence))


def ptb_tokenize_java(sentences: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer (same jar, flags and punctuation filter), except that
    - the temporary file goes to the system temp dir instead of into site-packages, which may
      be read-only or shared between concurrent runs;
    - every line break or separator in a caption becomes a space (pycocoevalcap only replaces
      \\n), since the jar reads one caption per line;
    - the file ends with a newline: without one the jar tokenizes the last caption differently
      ("you've" -> "you ` ve" instead of "you 've");
    - the output must hold exactly one line per caption, else RuntimeError. No fallback to
      the Python tokenizer: the figures would then be labelled as the jar's while coming from
      an approximation, and a jar that misreads its input is a fault to see, not to hide."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="ptb-") as tmp:
        source = Path(tmp) / "sentences.txt"
        source.write_text("".join(one_line(s) + "\n" for s in sentences), encoding="utf-8")
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(source)]
        done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Java PTBTokenizer failed ({done.stderr.decode(errors='replace')[-500:]}); "
                           "check `java -version` works or score with backend='python' (evaluate.backend)")
    lines = done.stdout.decode("utf-8").split("\n")
    if len(lines) != len(sentences) + 1 or lines[-1]:
        unterminated = " (the last unterminated)" if lines[-1] else ""
        raise RuntimeError(
            f"PTBTokenizer returned {len(lines) - (not lines[-1])} lines{unterminated} for {len(sentences)} "
            "sentences, so hypotheses and references would be misaligned; nothing was scored. Score with "
            "backend='python' (evaluate.backend: python) and report the captions that caused it")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation) for line in lines[:-1]]


def java_available() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        return subprocess.run(["java", "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _check_inputs(references: dict[str, list[str]], hypotheses: dict[str, str]) -> list[str]:
    if not hypotheses:
        raise ValueError("no generated captions to score (hypotheses is empty)")
    missing = [i for i in hypotheses if not references.get(i)]
    if missing:
        raise ValueError(
            f"{len(missing)} image id(s) have a generated caption but no reference captions, "
            f"e.g. {missing[:5]}; score only images of a split whose captions file lists them"
        )
    for i, caption in hypotheses.items():
        if not isinstance(caption, str):
            raise TypeError(f"hypothesis for image {i!r} must be one string, got {type(caption).__name__}")
        refs = references[i]
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references for image {i!r} must be a list of strings, got {refs!r}")
    return list(hypotheses)


def _pycocoevalcap_scores(gts: dict, res: dict) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    corpus = {f"bleu_{n + 1}": float(bleu[n]) for n in range(4)}
    corpus.update(rouge_l=float(rouge), cider=float(cider))
    per_image = {
        i: {"bleu_4": float(b4), "rouge_l": float(r), "cider": float(c)}
        for i, b4, r, c in zip(gts, bleu_per_image[3], rouge_per_image, cider_per_image)
    }
    return corpus, per_image


@contextlib.contextmanager
def meteor_jar() -> Iterator:
    """One METEOR 1.5 JVM for the block; pass it to score_captions(meteor=...)."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        yield meteor
    finally:  # don't leave a 2 GB-heap JVM behind until garbage collection
        with contextlib.suppress(OSError):  # the jar may already have died
            meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def _meteor_java(gts: dict, res: dict, meteor=None) -> tuple[float, list[float]]:
    # The jar reads one line per request, so a caption must not contain its "|||" separator.
    gts = {i: [r.replace("|||", "") for r in refs] for i, refs in gts.items()}
    try:
        with contextlib.nullcontext(meteor) if meteor is not None else meteor_jar() as jar:
            score, per_image = jar.compute_score(gts, res)
    except (ValueError, BrokenPipeError, OSError) as error:
        raise RuntimeError(f"METEOR 1.5 (java) failed: {error}; check `java -version` works "
                           "and that 2 GB of heap is available, or score with backend='python'") from error
    return float(score), [float(s) for s in per_image]


def _meteor_nltk(gts: dict, res: dict) -> tuple[float | None, list[float]]:
    from nltk.translate.meteor_score import meteor_score

    wordnet = load_wordnet()
    if wordnet is None:
        return None, []
    per_image = [meteor_score([r.split() for r in gts[i]], res[i][0].split(), wordnet=wordnet, **NLTK_METEOR_PARAMS)
                 for i in gts]
    return sum(per_image) / len(per_image), per_image
