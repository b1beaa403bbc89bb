"""The SCST reward: CIDEr-D exactly as pycocoevalcap computes it (the same n-grams, tf-idf,
clipping, Gaussian length penalty and x10), with document frequencies taken once from the
TRAIN references, over the units vocab.reward_words gives (words, whatever the vocabulary
kind); pipeline.training.scst samples and trains with it."""
from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Iterable, Sequence

from pipeline.data.vocab import Vocab

Tokens = Sequence[Hashable]


def reference_tokens(captions_per_image: Iterable[Sequence[str]], vocab: Vocab,
                     language: str | None = None) -> list[list[list[Hashable]]]:
    """Reference captions in the units the reward counts (vocab.reward_words): words, as word
    ids where the word vocabulary has them. Words outside it stay as their string: a sampled
    <unk> then matches nothing (as it would once decoded to text), and the references' n-gram
    statistics are those of the real words. `language`: how the words are split (subword kind)."""
    return [[vocab.reward_words(c, language) for c in captions] for captions in captions_per_image]


class CiderD:
    """CIDEr-D of one candidate against one image's references, with the document frequencies
    of a fixed corpus (each image's reference set is one document). Tokens are any hashables
    (word ids or words). `end`, when given, is appended to every reference; candidates are
    scored as given, so pass them with <end> when the sample emitted it."""

    def __init__(self, corpus_refs: Sequence[Sequence[Tokens]], end: Hashable | None = None,
                 n: int = 4, sigma: float = 6.0):
        if not corpus_refs:
            raise ValueError("CiderD needs the reference captions of at least one (train) image")
        self.end, self.n, self.sigma = end, n, sigma
        df: Counter = Counter()
        for refs in corpus_refs:
            df.update({g for ref in refs for g in self._ngrams(self._with_end(ref))})
        self.ref_len = math.log(len(corpus_refs))
        # idf = log(N) - log(max(1, df)): an n-gram seen in no document gets log(N), as in pycocoevalcap.
        self.idf = {g: self.ref_len - math.log(max(1.0, count)) for g, count in df.items()}
        self._refs_cache: dict[tuple, list] = {}

    def _with_end(self, tokens: Tokens) -> tuple:
        return (*tokens, self.end) if self.end is not None else tuple(tokens)

    def _ngrams(self, tokens: tuple) -> Counter:
        return Counter(tokens[i: i + k] for k in range(1, self.n + 1) for i in range(len(tokens) - k + 1))

    def _vector(self, tokens: tuple):
        """tf-idf weights keyed by n-gram, the norm of each order, and the length that
        pycocoevalcap uses for the penalty (its bigram count: max(words - 1, 0))."""
        vec, norms = {}, [0.0] * self.n
        for gram, tf in self._ngrams(tokens).items():
            weight = tf * self.idf.get(gram, self.ref_len)
            vec[gram] = weight
            norms[len(gram) - 1] += weight * weight
        return vec, [math.sqrt(v) for v in norms], max(len(tokens) - 1, 0)

    def _prepared(self, refs: Sequence[Tokens]) -> list:
        # Each image's references are scored ~n_samples times per epoch: vectorise them once.
        key = tuple(tuple(r) for r in refs)
        cached = self._refs_cache.get(key)
        if cached is None:
            if not key:
                raise ValueError("an image has no reference captions to score against")
            cached = self._refs_cache[key] = [self._vector(self._with_end(r)) for r in key]
        return cached

    def score(self, candidate: Tokens, refs: Sequence[Tokens]) -> float:
        return self.score_many([candidate], refs)[0]

    def score_many(self, candidates: Sequence[Tokens], refs: Sequence[Tokens]) -> list[float]:
        """Scores of several candidates (e.g. the samples of one image) against one image's refs."""
        prepared, memo, out = self._prepared(refs), {}, []
        for cand in candidates:
            cand = tuple(cand)
            if cand not in memo:  # samples of one image often repeat
                memo[cand] = self._score_vector(self._vector(cand), prepared)
            out.append(memo[cand])
        return out

    def _score_vector(self, hyp, prepared) -> float:
        vec, norms, length = hyp
        total = 0.0
        two_sigma2 = 2 * self.sigma ** 2
        for ref_vec, ref_norms, ref_length in prepared:
            val = [0.0] * self.n
            for gram, weight in vec.items():
                ref_weight = ref_vec.get(gram)
                if ref_weight is not None:
                    val[len(gram) - 1] += min(weight, ref_weight) * ref_weight  # clipped counts
            penalty = math.exp(-((length - ref_length) ** 2) / two_sigma2)
            for k in range(self.n):
                if norms[k] != 0 and ref_norms[k] != 0:
                    val[k] /= norms[k] * ref_norms[k]
                total += val[k] * penalty
        return 10.0 * total / self.n / len(prepared)
