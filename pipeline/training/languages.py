"""Training one model on captions in several languages (pipeline/data/multilingual.py): which
languages it learns, the captions drawn each epoch (train.captions_per_language), the
validation references of each language, and the language SCST scores each image in.

With one language every function here gives what the English-only loop always used (all
captions, <start>, one CIDEr-D scorer), so such a model trains exactly as before."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch

from pipeline.data.multilingual import ENGLISH, caption_languages, captions_in, ordered_languages, start_id
from pipeline.data.vocab import Vocab
from pipeline.training.cider_d import CiderD, reference_tokens


def trained_languages(train_rows: pd.DataFrame, vocab: Vocab) -> list[str]:
    """The model's languages, default first: the vocabulary's when it has language tokens, else
    the one language of the train captions. A vocabulary that does not fit the captions (built
    from other data) is an error naming the fix."""
    present = ordered_languages(code for codes in caption_languages(train_rows) for code in codes)
    if vocab.languages:
        missing = [code for code in present if code not in vocab.languages]
        if missing:
            raise ValueError(f"the train captions are in {', '.join(present)}, the vocabulary has language tokens "
                             f"for {', '.join(vocab.languages)} only: rebuild it from these captions (dvc repro vocab)")
        return list(vocab.languages)
    if len(present) > 1:
        raise ValueError(f"the train captions are in {', '.join(present)}, but the vocabulary has no language "
                         f"tokens (it was built from captions in one language): rebuild it (dvc repro vocab)")
    return present or [ENGLISH]


def pair_groups(rows: pd.DataFrame) -> np.ndarray:
    """For every caption pair (train.caption_pairs order: row by row, caption by caption) the id
    of its (image, language) group."""
    ids: dict[tuple[int, str], int] = {}
    return np.asarray([ids.setdefault((i, code), len(ids))
                       for i, codes in enumerate(caption_languages(rows)) for code in codes], dtype=np.int64)


def pairs_per_epoch(groups: np.ndarray, k: int) -> int:
    """Caption pairs an epoch trains on: min(k, captions) of every (image, language) group."""
    return int(np.minimum(np.bincount(groups), k).sum())


def epoch_pairs(groups: np.ndarray, k: int, generator: torch.Generator) -> torch.Tensor:
    """The pairs of one epoch, ascending: k of each (image, language) group (all of a smaller
    one), drawn afresh from `generator` every epoch, so an epoch over 5 languages costs what one
    over English does while every caption still comes round (train.captions_per_language)."""
    keys = torch.rand(len(groups), generator=generator).numpy()
    order = np.lexsort((keys, groups))  # by group, randomly within it
    ordered = groups[order]
    rank = np.arange(len(order)) - np.searchsorted(ordered, ordered, side="left")
    return torch.as_tensor(np.sort(order[rank < k]))


def validation_references(val_rows: pd.DataFrame, languages: list[str]) -> dict[str, list[list[str]]]:
    """language -> each validation image's captions in it (empty where it has none): the model
    is validated in each of its languages against that language's captions only."""
    return {code: captions_in(val_rows, code) for code in languages}


class LanguageRewards:
    """SCST's CIDEr-D in every language of the model: per language, the train references in
    the reward's units and a scorer with that language's document frequencies. Each epoch
    scores every image in one of its languages, in turn (image i in its language (i + epoch)
    mod n), so an SCST epoch costs what an English one does and, over epochs, every language
    is trained on every image. One language: the shared scorer and <start> of the English loop."""

    def __init__(self, rows: pd.DataFrame, vocab: Vocab, languages: list[str]):
        self.languages = languages
        self.refs = {code: reference_tokens(captions_in(rows, code), vocab, code) for code in languages}
        self.scorers = {code: CiderD([r for r in refs if r], end=vocab.end_id) for code, refs in self.refs.items()}
        self.words = {code: functools.partial(vocab.sampled_words, language=code) for code in languages}
        self.starts = {code: start_id(vocab, code) for code in languages}
        self.available = [[code for code in languages if self.refs[code][i]] for i in range(len(rows))]

    def epoch(self, epoch: int) -> dict:
        """scst_epoch's image_refs, scorer, words and start_id for this epoch."""
        if len(self.languages) == 1:
            (code,) = self.languages
            return {"image_refs": self.refs[code], "scorer": self.scorers[code], "words": self.words[code],
                    "start_id": self.starts[code]}
        codes = [have[(i + epoch) % len(have)] for i, have in enumerate(self.available)]
        return {"image_refs": [self.refs[code][i] for i, code in enumerate(codes)],
                "scorer": [self.scorers[code] for code in codes], "words": [self.words[code] for code in codes],
                "start_id": torch.tensor([self.starts[code] for code in codes], dtype=torch.long)}
