"""The free-running validation score that picks the kept checkpoint (pipeline.training.train):
greedy captions of the validation images scored against their references (CIDEr-D or BLEU-4,
train.val_metric). A model of several languages is validated in each of them, against that
language's captions only, the text split as evaluation splits it; the score is the mean over
the languages, so no language is given up for the others."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from pipeline.data.multilingual import ENGLISH, banned_ids, start_id
from pipeline.data.vocab import Vocab
from pipeline.decoders.search import decode
from pipeline.distributed.ddp import broadcast, is_main
from pipeline.evaluation.metrics import quick_score


class ScoringSettings(Protocol):  # what validation reads of TrainConfig (train imports this module)
    max_len: int
    val_metric: str


class ValidationImages(Protocol):  # what validation reads of a FeatureSource (sources.py)
    def val_features(self, n: int, device: torch.device) -> tuple[torch.Tensor, list[int]]: ...


def validation_score(decoder: torch.nn.Module, features: torch.Tensor, references: list[list[str]],
                     vocab: Vocab, cfg: ScoringSettings, batch_size: int = 512, language: str | None = None) -> float:
    """Greedy captions in `language` (None: a model of one language) scored against `references`."""
    hyps = {}
    first = start_id(vocab, language) if language else vocab.start_id
    for lo in range(0, len(features), batch_size):
        out = decode(decoder, features[lo: lo + batch_size], first, vocab.end_id, cfg.max_len,
                     banned_ids=banned_ids(vocab))
        for j, tokens in enumerate(out.tokens):
            hyps[str(lo + j)] = vocab.decode(tokens)
    refs = {str(i): r for i, r in enumerate(references)}
    return quick_score(refs, hyps, metric=cfg.val_metric, language=language or ENGLISH)


def validate(decoder: nn.Module, source: ValidationImages, n_val: int, val_refs: dict[str, list[list[str]]],
             vocab: Vocab, cfg: ScoringSettings, device: torch.device) -> float:
    """The validation score, computed on rank 0 and broadcast: every rank then takes the same
    keep/stop decision from the same number. With several languages, the mean over them of each
    language's score on the images that have captions in it."""
    score = None
    if is_main():
        val_features, kept = source.val_features(n_val, device)
        scores = []
        for language, captions in val_refs.items():
            refs = [captions[i] for i in kept]
            have = [j for j, r in enumerate(refs) if r]
            if have:  # a language without validation captions cannot be scored
                features = val_features if len(have) == len(refs) else val_features[have]
                scores.append(validation_score(decoder, features, [refs[j] for j in have], vocab, cfg, language=language))
        if not scores:
            raise ValueError(f"no validation image has a caption in {', '.join(val_refs)}: raise data.val_fraction")
        score = sum(scores) / len(scores)
    return broadcast(score)
