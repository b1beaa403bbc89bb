"""Greedy and beam search, both batched over images: the whole batch (times the beam)
runs through the decoder in one call per step. Works for every decoder of pipeline.decoders
through start/step/select only. Shared by evaluation, caption-batch and the API."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Decoded:
    tokens: list[list[int]]  # word ids without <start>/<end>
    logprob: list[float]  # sum of token log-probabilities, <end> included
    mean_logprob: list[float]  # logprob / number of scored tokens: a length-fair confidence


def start_tokens(start_id: int | torch.Tensor, n: int, device: torch.device, repeat: int = 1) -> torch.Tensor:
    """The first decoder input of each of n rows (each repeated `repeat` times, for beams or
    samples): `start_id` is one id for all (<start>) or one per row (a language token per caption)."""
    if isinstance(start_id, torch.Tensor):
        if start_id.shape != (n,):
            raise ValueError(f"start ids must be one id or one per row ({n},), got shape {tuple(start_id.shape)}")
        return start_id.to(device=device, dtype=torch.long).repeat_interleave(repeat)
    return torch.full((n * repeat,), int(start_id), dtype=torch.long, device=device)


def checked_banned_ids(banned_ids: Iterable[int], end_id: int) -> list[int]:
    banned = sorted({int(i) for i in banned_ids})
    if end_id in banned:
        raise ValueError(f"banned_ids contains the <end> id {end_id}: captions could never finish")
    return banned


@torch.inference_mode()
def decode(model: nn.Module, features: torch.Tensor, start_id: int | torch.Tensor, end_id: int,
           max_len: int = 20, beam_size: int = 1, length_penalty: float = 0.7,
           banned_ids: Iterable[int] = (), no_repeat_ngram: int = 0) -> Decoded:
    """Caption every row of `features` ((N, D) pooled or (N, C, h, w) for spatial decoders).
    beam_size 1 is greedy; above that, beam search ranked by logprob / length**length_penalty
    (0 = raw log-probability). `start_id`: the first input, one id or one per row (N,) (a
    multilingual model's language tokens). `banned_ids` (e.g. <unk>, <pad>, <start>) are never emitted;
    scores stay the model's own log-probabilities (not renormalised), so they still match
    teacher-forced scoring. `no_repeat_ngram` n > 0: no caption contains the same n words twice
    (a word that would complete an n-gram already in the caption is never emitted)."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1 (1 = greedy), got {beam_size}")
    if no_repeat_ngram < 0:
        raise ValueError(f"no_repeat_ngram must be >= 0 (0 = off), got {no_repeat_ngram}")
    banned = checked_banned_ids(banned_ids, end_id)
    if features.shape[0] == 0:
        return Decoded([], [], [])
    model.eval()
    if beam_size == 1:
        return greedy(model, features, start_id, end_id, max_len, banned, no_repeat_ngram)
    return beam_search(model, features, start_id, end_id, max_len, beam_size, length_penalty, banned,
                       no_repeat_ngram)


def _step(model: nn.Module, tokens: torch.Tensor, state, banned: torch.Tensor | None):
    logp, state = model.step(tokens, state)
    if banned is not None:
        logp = logp.index_fill(-1, banned, float("-inf"))
    return logp, state


def _banned(banned: Iterable[int], device: torch.device) -> torch.Tensor | None:
    ids = sorted({int(i) for i in banned})
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


def repeated_ngram_mask(history: torch.Tensor, n: int, vocab: int) -> torch.Tensor | None:
    """(rows, t) words so far -> (rows, vocab) True where the word would complete an n-gram the
    row already holds (None when nothing can be blocked yet). The last n-1 words are matched
    against every earlier window of n-1 words; the word that followed such a window is blocked."""
    rows, t = history.shape
    if n < 1 or t < max(n - 1, 1):
        return None
    mask = torch.zeros(rows, vocab, dtype=torch.bool, device=history.device)
    if n == 1:
        return mask.scatter_(1, history, True)
    windows = history.unfold(1, n - 1, 1)[:, :-1]  # (rows, t-n+1, n-1): each window that has a next word
    match = (windows == history[:, t - n + 1:].unsqueeze(1)).all(-1)
    row, start = match.nonzero(as_tuple=True)
    mask[row, history[row, start + n - 1]] = True
    return mask


def _block_repeats(logp: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    mask = repeated_ngram_mask(history, n, logp.shape[-1])
    return logp if mask is None else logp.masked_fill(mask, float("-inf"))


def worth_dropping(done: int, rows: int) -> bool:
    """Drop finished rows from the batch once they are an eighth of it: every later step then
    runs on fewer rows, and dropping copies the state (the encoder memory included) only a few
    times per batch. Rows are independent, so captions do not change (tests/test_decoders.py)."""
    return done > 0 and 8 * done >= rows


def greedy(model: nn.Module, features: torch.Tensor, start_id: int | torch.Tensor, end_id: int,
           max_len: int, banned: Iterable[int] = (), no_repeat_ngram: int = 0) -> Decoded:
    n, device = features.shape[0], features.device
    banned = _banned(banned, device)
    state = model.start(features)
    tokens = start_tokens(start_id, n, device)
    out = torch.full((n, max_len), end_id, dtype=torch.long, device=device)
    logprob = torch.zeros(n, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # the input row of each row still decoded
    alive = torch.ones(n, dtype=torch.bool, device=device)
    for t in range(max_len):
        logp, state = _step(model, tokens, state, banned)
        if no_repeat_ngram:
            logp = _block_repeats(logp, out[rows, :t], no_repeat_ngram)
        best, tokens = logp.max(dim=-1)
        logprob[rows] += best * alive  # a finished caption scores nothing more
        length[rows] += alive
        out[rows, t] = tokens
        alive &= tokens != end_id
        left = int(alive.sum())  # one sync per step, not one .item() per image
        if left == 0:
            break
        if worth_dropping(len(rows) - left, len(rows)):
            keep = alive.nonzero().squeeze(1)
            rows, tokens, alive, state = rows[keep], tokens[keep], alive[keep], model.select(state, keep)
    return _finish(out, logprob, length, end_id)


def beam_search(model: nn.Module, features: torch.Tensor, start_id: int | torch.Tensor, end_id: int,
                max_len: int, beam_size: int, length_penalty: float, banned: Iterable[int] = (),
                no_repeat_ngram: int = 0) -> Decoded:
    """Standard beam search over (images x beams) at once. A finished beam stays in the beam
    with a frozen score (it can only be extended by <end> at zero cost), and candidates are
    ranked by score / length**length_penalty, so long and short captions compete fairly. An
    image whose beams have all finished can no longer change: it leaves the batch."""
    n, k, device = features.shape[0], beam_size, features.device
    banned = _banned(banned, device)
    # row = image * k + beam
    state = model.select(model.start(features), torch.arange(n, device=device).repeat_interleave(k))
    tokens = start_tokens(start_id, n, device, repeat=k)
    scores = torch.zeros(n, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only one alive at first
    lengths = torch.zeros(n, k, device=device)
    finished = torch.zeros(n, k, dtype=torch.bool, device=device)
    history = torch.zeros(n, k, 0, dtype=torch.long, device=device)
    images = torch.arange(n, device=device)  # the input image of each image still decoded
    out = torch.full((n, max_len), end_id, dtype=torch.long, device=device)
    out_score, out_length = torch.zeros(n, device=device), torch.zeros(n, dtype=torch.long, device=device)

    def keep_best(which: torch.Tensor) -> None:  # the final caption of images[which]
        ranked = scores[which] / lengths[which].clamp(min=1) ** length_penalty
        best = ranked.argmax(dim=-1, keepdim=True)
        out[images[which], : history.shape[-1]] = history[which].gather(
            1, best.unsqueeze(-1).expand(-1, 1, history.shape[-1])).squeeze(1)
        out_score[images[which]] = scores[which].gather(1, best).squeeze(1)
        out_length[images[which]] = lengths[which].gather(1, best).squeeze(1).long()

    for _ in range(max_len):
        logp, state = _step(model, tokens, state, banned)
        vocab = logp.shape[-1]
        if no_repeat_ngram:
            logp = _block_repeats(logp, history.reshape(len(images) * k, history.shape[-1]), no_repeat_ngram)
        logp = logp.view(len(images), k, vocab)
        # Finished beams: the only continuation is <end> again, at no cost, length unchanged.
        frozen = torch.full((vocab,), float("-inf"), device=device)
        frozen[end_id] = 0.0
        logp = torch.where(finished.unsqueeze(-1), frozen, logp)
        candidates = scores.unsqueeze(-1) + logp  # (n, k, V)
        new_len = (lengths + (~finished)).unsqueeze(-1).expand_as(candidates)
        ranked = candidates / new_len.clamp(min=1) ** length_penalty
        _, flat = ranked.reshape(len(images), -1).topk(k, dim=-1)
        beam, word = flat // vocab, flat % vocab
        scores = candidates.reshape(len(images), -1).gather(1, flat)
        lengths = new_len.reshape(len(images), -1).gather(1, flat)
        finished = finished.gather(1, beam) | (word == end_id)
        history = torch.cat([history.gather(1, beam.unsqueeze(-1).expand_as(history)), word.unsqueeze(-1)], -1)
        rows = beam + torch.arange(len(images), device=device).unsqueeze(1) * k  # (images, k)
        tokens = word
        done = finished.all(dim=1)
        n_done = int(done.sum())  # one sync per step
        if n_done == len(images):
            break
        if worth_dropping(n_done, len(images)):
            keep_best(done)
            keep = (~done).nonzero().squeeze(1)
            images, scores, lengths, finished, history = (x[keep] for x in (images, scores, lengths, finished, history))
            rows, tokens = rows[keep], tokens[keep]
        state = model.select(state, rows.view(-1))
        tokens = tokens.view(-1)
    keep_best(torch.arange(len(images), device=device))
    return _finish(out, out_score, out_length, end_id)


def _finish(out: torch.Tensor, logprob: torch.Tensor, length: torch.Tensor, end_id: int) -> Decoded:
    sequences = []
    for row in out.tolist():  # one transfer for the batch
        sequences.append(row[: row.index(end_id)] if end_id in row else row)
    logprob_list = logprob.tolist()
    lengths = length.clamp(min=1).tolist()
    return Decoded(sequences, logprob_list, [lp / m for lp, m in zip(logprob_list, lengths)])
