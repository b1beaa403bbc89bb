"""The sentencepiece kind of vocabulary (vocab.kind: sentencepiece): unigram or BPE pieces
learned in-process from the TRAIN captions only, so a word seen only in validation or test
captions is spelled with pieces of train words instead of becoming <unk>.

Pieces are learned on the normalised captions (pipeline.data.vocab.normalise: the metrics'
tokens joined by spaces), so decoding gives back exactly the text the word kind gives, and the
metrics and SCST's reward still count words. With vocab.verbatim they are learned on the
captions as written (Unicode NFC, one line, single spaces): decoded captions keep case and
punctuation (German nouns, "l'étoile", commas), and the metrics and the reward lower-case and
split them as they split the references. Japanese captions are split into words first
(vocab.japanese_words, pipeline/data/segmentation.py), so no piece spans two words. Sentencepiece needs no spaces (Japanese, Chinese:
a caption is one run of pieces) and holds vocab.special_tokens (language tokens) as whole
pieces. The trained model is kept as bytes (base64 in data/vocab.json and in the checkpoint),
so the Captioner decodes without data/ and checkpoints still load with weights_only=True."""
from __future__ import annotations

import base64
import io
import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import Hashable, Iterable

import sentencepiece as spm

from pipeline.data.segmentation import join_words, split_words
from pipeline.data.tokenizers import score_tokens
from pipeline.data.vocab import (END, PAD, SPECIALS, START, UNK, Vocab, VocabConfig, normalise, one_line, readable,
                                 tokenize)

logger = logging.getLogger(__name__)
KIND = "sentencepiece"


class SubwordVocab(Vocab):
    """A Vocab whose tokens are sentencepiece pieces; ids 0-3 are the same specials."""
    kind = KIND

    def __init__(self, model: bytes, verbatim: bool = False, japanese_words: bool = False):
        self.model, self.verbatim, self.japanese_words = bytes(model), bool(verbatim), bool(japanese_words)
        self.processor = spm.SentencePieceProcessor(model_proto=self.model)
        pieces = [self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())]
        if pieces[: len(SPECIALS)] != list(SPECIALS):
            raise ValueError(f"not a vocabulary of this pipeline: its first pieces are {pieces[:len(SPECIALS)]}, "
                             f"expected {list(SPECIALS)}: rebuild it with `dvc repro vocab`")
        super().__init__(pieces[len(SPECIALS):])

    def form(self, caption: str) -> str:
        """The text the pieces spell: normalise(caption), or with verbatim the caption as
        written; Japanese split into words with japanese_words (decode joins them again)."""
        return caption_form(caption, self.verbatim, self.japanese_words)

    def token_ids(self, caption: str) -> list[int]:
        return self.processor.encode(self.form(caption))

    def text(self, ids: list[int]) -> str:
        text = self.processor.decode(ids)
        return join_words(text) if self.japanese_words else text

    def spelled_words(self, caption: str) -> list[str]:
        return self.form(caption).split() if self.verbatim else tokenize(caption)

    def count_unknown(self, words: list[str]) -> int:
        # Pieces never cross a space, so a word is spelled alike alone or in its caption.
        spelled = self.processor.encode([w if self.verbatim else readable(w) for w in words])
        return sum(self.unk_id in ids for ids in spelled)

    def reward_words(self, caption: str, language: str | None = None) -> list[Hashable]:
        """The caption's words (strings): the reward counts words, not pieces, as the metrics do,
        split as the metrics split `language` (characters for Japanese; None: the English tokens)."""
        return tokenize(caption) if language is None else score_tokens(caption, language)

    def sampled_words(self, ids: list[int], language: str | None = None) -> list[Hashable]:
        """The words of the decoded sample, then <end> if it was sampled (as reward_words'
        references end with it when the scorer appends it)."""
        ended = bool(ids) and ids[-1] == self.end_id
        return [*self.reward_words(self.decode(ids), language), *([self.end_id] if ended else [])]

    def payload(self) -> dict:
        languages = {"languages": self.languages} if self.languages else {}
        # Flags absent when off: files from before them load alike.
        flags = {key: True for key in ("verbatim", "japanese_words") if getattr(self, key)}
        return {"kind": KIND, "model": base64.b64encode(self.model).decode("ascii"), **flags, **languages}

    def to_list(self) -> list[str]:
        raise TypeError("a sentencepiece vocabulary is not a word list: store vocab.payload()")

    @classmethod
    def from_payload(cls, payload: dict) -> "SubwordVocab":
        return cls(base64.b64decode(payload["model"]), verbatim=bool(payload.get("verbatim", False)),
                   japanese_words=bool(payload.get("japanese_words", False)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.payload(), indent=0) + "\n")


def train_sentencepiece(train_captions: Iterable[str], cfg: VocabConfig) -> SubwordVocab:
    """Pieces learned from the normalised (or, with cfg.verbatim, the written) train captions; the
    same captions and params give a byte-identical model (one thread, every sentence, no sampling)."""
    sentences = [s for s in (caption_form(c, cfg.verbatim, cfg.japanese_words) for c in train_captions) if s]
    if not sentences:
        raise ValueError("no train caption has a word: the sentencepiece vocabulary is learned from them")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type=cfg.model_type,
            vocab_size=cfg.size, character_coverage=cfg.character_coverage, byte_fallback=cfg.byte_fallback,
            user_defined_symbols=list(cfg.special_tokens),
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=PAD, bos_piece=START, eos_piece=END,
            unk_piece=UNK, unk_surface=UNK,
            # The captions are in their form already: any further normalisation (NFKC) would make
            # decode(encode(caption)) differ from the text the metrics compare.
            normalization_rule_name="identity",
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as err:
        raise ValueError(_explain(str(err), cfg)) from None
    vocab = SubwordVocab(model.getvalue(), verbatim=cfg.verbatim, japanese_words=cfg.japanese_words)
    logger.info("sentencepiece %s vocabulary: %d pieces from %d train captions", cfg.model_type, len(vocab),
                len(sentences))
    return vocab


def caption_form(caption: str, verbatim: bool, japanese_words: bool) -> str:
    text = verbatim_text(caption) if verbatim else normalise(caption)
    return split_words(text) if japanese_words else text


def verbatim_text(caption: str) -> str:
    """A caption as written, in one canonical form: Unicode NFC, one line, single spaces."""
    return " ".join(unicodedata.normalize("NFC", one_line(caption)).split())


def _explain(message: str, cfg: VocabConfig) -> str:
    """Sentencepiece's refusal as the param to change."""
    most = re.search(r"Vocabulary size too high.*<= (\d+)", message)
    if most:
        return (f"vocab.size={cfg.size} is more than the {most.group(1)} pieces sentencepiece ({cfg.model_type}) "
                f"can form from the train captions: set vocab.size to at most {most.group(1)}")
    least = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if least:
        fallback = " (vocab.byte_fallback adds 256 byte pieces)" if cfg.byte_fallback else ""
        return (f"vocab.size={cfg.size} cannot hold the {least.group(1)} special and character pieces the train "
                f"captions need{fallback}: raise vocab.size or lower vocab.character_coverage")
    return f"sentencepiece could not learn a vocabulary from the train captions with the vocab params: {message}"
