"""Self-critical sequence training (Rennie et al. 2017) with a CIDEr-D reward, for any decoder
of pipeline.decoders (start / step / select).

The reward is CIDEr-D exactly as pycocoevalcap computes it (the same n-grams, tf-idf, clipping,
Gaussian length penalty and x10), with document frequencies taken once from the TRAIN
references, and `<end>` counted as a word ("<end> counted", as in ruotianluo/ImageCaptioning.pytorch):
references end with it, a sample carries it only if it stopped, so a caption cut off by max_len
(or one that stops in the middle of a phrase) loses the n-grams that end a reference.
Sampled captions get the mean reward of the other samples of the same image as baseline
(leave-one-out, the "new self-critical" of Luo 2020): no greedy pass is needed.

Typical use from the training loop (after cross-entropy epochs):

    refs = reference_tokens(train_rows["captions"], vocab)  # pipeline.training.cider_d
    scorer = CiderD(refs, end=vocab.end_id)
    stats = scst_epoch(decoder, optimizer, train_features, refs, scorer, start_id=vocab.start_id,
                       end_id=vocab.end_id, max_len=cfg.max_len, generator=generator,
                       banned_ids=(vocab.pad_id, vocab.start_id, vocab.unk_id), words=vocab.sampled_words)

The reward counts words, as the metrics do, whatever the vocabulary kind: references and
samples go through vocab.reward_words / vocab.sampled_words (word ids for the word kind, the
words of the detokenised text for sentencepiece pieces).

A multilingual model (pipeline/data/multilingual.py) scores each image in one language: the
start token, the scorer (document frequencies of that language's references) and the words
function may be given per image (a tensor of start ids, lists of scorers and of functions,
one per image); scst_epoch takes each batch's share (pipeline/training/languages.py).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Hashable, Iterable, Sequence

import torch
from torch import nn

from pipeline.decoders.search import checked_banned_ids, greedy, start_tokens, worth_dropping
from pipeline.distributed.ddp import all_sum, average_gradients, broadcast, shard
from pipeline.training.cider_d import CiderD

logger = logging.getLogger(__name__)

Words = Callable[[list[int]], Sequence[Hashable]]  # sampled ids (<end> last if sampled) -> reward units


def _take(value, rows: list[int]):
    """The batch's share of a per-image value (start ids tensor, list of scorers or of words
    functions); a value shared by every image as it is."""
    if isinstance(value, torch.Tensor):
        return value[rows]
    return [value[i] for i in rows] if isinstance(value, (list, tuple)) else value


def _each(value, n: int) -> list:
    """A per-image list of n, from a shared value or a list already."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _sampling_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """torch.multinomial needs a generator on the probabilities' device: derive one, seeded
    from the given generator, so a CPU generator still makes GPU sampling reproducible."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def sample(decoder: nn.Module, features: torch.Tensor, start_id: int | torch.Tensor, end_id: int, max_len: int,
           n_samples: int, banned_ids: Iterable[int] = (), generator: torch.Generator | None = None,
           pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `n_samples` captions per image from the decoder's distribution (row = image * n + j).
    Returns tokens (N*n, T) (pad after <end>), their log-probabilities with grad (N*n, T, 0 where
    masked) and the mask (N*n, T) of tokens up to and including <end>; T <= max_len (the most
    tokens a sample may have, <end> included, as in pipeline.decoders.search). Banned ids get
    probability 0 and the rest is renormalised: the log-probs are those of the policy sampled."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1 (train.max_len), got {max_len}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    banned_ids = checked_banned_ids(banned_ids, end_id)
    device = features.device
    generator = _sampling_generator(generator, device)
    total = features.shape[0] * n_samples
    state = decoder.start(features)
    state = decoder.select(state, torch.arange(features.shape[0], device=device).repeat_interleave(n_samples))
    banned = torch.as_tensor(banned_ids, dtype=torch.long, device=device)
    tokens = start_tokens(start_id, features.shape[0], device, repeat=n_samples)
    rows = torch.arange(total, device=device)  # the samples still drawn (finished ones leave the batch)
    alive = torch.ones(total, dtype=torch.bool, device=device)
    words, logps, masks = [], [], []
    for _ in range(max_len):
        logp, state = decoder.step(tokens, state)
        if banned.numel():
            logp = torch.log_softmax(logp.index_fill(1, banned, float("-inf")), dim=-1)
        with torch.no_grad():
            tokens = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        masks.append(torch.zeros(total, dtype=torch.bool, device=device).index_put((rows,), alive))
        logps.append(chosen.new_zeros(total).index_put((rows,), torch.where(alive, chosen, torch.zeros_like(chosen))))
        words.append(torch.full((total,), pad_id, dtype=tokens.dtype, device=device).index_put(
            (rows,), torch.where(alive, tokens, torch.full_like(tokens, pad_id))))
        alive = alive & (tokens != end_id)
        left = int(alive.sum())  # one sync per step
        if left == 0:
            break
        if worth_dropping(len(rows) - left, len(rows)):
            keep = alive.nonzero().squeeze(1)
            rows, tokens, alive, state = rows[keep], tokens[keep], alive[keep], decoder.select(state, keep)
    return torch.stack(words, 1), torch.stack(logps, 1), torch.stack(masks, 1)


def sequence_log_probs(decoder: nn.Module, features: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                      n_samples: int, start_id: int | torch.Tensor, end_id: int,
                      banned_ids: Iterable[int] = ()) -> torch.Tensor:
    """log p of given samples (row image * n + j, as sample() returns them) in one teacher-forced
    forward pass, with the ban sample() applies; 0 where masked. Decoders with `forward_rows`
    encode each image once for its n samples."""
    rows = torch.arange(features.shape[0], device=features.device).repeat_interleave(n_samples)
    first = start_tokens(start_id, features.shape[0], tokens.device, repeat=n_samples)
    captions = torch.cat([first.unsqueeze(1), tokens], dim=1)
    forward_rows = getattr(decoder, "forward_rows", None)
    logits = forward_rows(features, captions, rows) if forward_rows else decoder(features[rows], captions)
    logp = torch.log_softmax(logits.float(), dim=-1)
    banned = torch.as_tensor(tuple(banned_ids), dtype=torch.long, device=logp.device)
    if banned.numel():
        logp = torch.log_softmax(logp.index_fill(2, banned, float("-inf")), dim=-1)
    # Masked steps hold pad, which the ban sends to -inf: gather a valid id there, then zero it.
    picked = logp.gather(2, torch.where(mask, tokens, end_id).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, torch.zeros_like(picked))


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (N, n) -> for each sample, the mean reward of the other n-1 samples of its image."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs n_samples >= 2, got {n}")
    return (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)


def sample_rewards(scorer: CiderD | Sequence[CiderD], tokens: torch.Tensor, mask: torch.Tensor,
                   image_refs: Sequence, n_samples: int, words: Words | Sequence[Words] | None = None) -> torch.Tensor:
    """CIDEr-D of every sample (row image * n + j) against its image's references -> (N, n).
    `words` turns a sample's ids into the references' units (vocab.sampled_words); None: as they
    are. `scorer` and `words` are shared, or one per image (a multilingual batch)."""
    lengths = mask.sum(1).tolist()
    rows = [seq[:m] for seq, m in zip(tokens.tolist(), lengths)]  # <end> kept when it was sampled
    scorers, image_words = _each(scorer, len(image_refs)), _each(words, len(image_refs))
    rewards = []
    for i, refs in enumerate(image_refs):
        samples = rows[i * n_samples: (i + 1) * n_samples]
        if image_words[i] is not None:
            samples = [image_words[i](row) for row in samples]
        rewards.append(scorers[i].score_many(samples, refs))
    return torch.tensor(rewards, dtype=torch.float32)


def scst_loss(decoder: nn.Module, features: torch.Tensor, image_refs: Sequence, scorer: CiderD | Sequence[CiderD],
              start_id: int | torch.Tensor, end_id: int, max_len: int, n_samples: int = 5,
              banned_ids: Iterable[int] = (), generator: torch.Generator | None = None,
              words: Words | Sequence[Words] | None = None, amp_dtype: torch.dtype | None = None
              ) -> tuple[torch.Tensor, dict]:
    """REINFORCE with a leave-one-out baseline: loss = -(r - b) * log p(sample), averaged over
    samples. Normalised per sample, not per token: that is the unbiased estimate of the gradient
    of the expected reward; dividing by tokens would weigh each short sample's tokens more.
    The reward is a constant: gradients flow only through the sampled tokens' log-probs.
    amp_dtype: autocast dtype of sampling and of the teacher-forced pass (train.precision)."""
    if len(image_refs) != features.shape[0]:
        raise ValueError(f"{features.shape[0]} images of features but {len(image_refs)} reference lists")
    for end in {s.end for s in _each(scorer, 1)}:
        if end is not None and end != end_id:
            raise ValueError(f"the scorer appends {end!r} to references but samples end with {end_id!r}: "
                             "build CiderD(refs, end=vocab.end_id)")
    if n_samples < 2:
        raise ValueError(f"SCST's leave-one-out baseline needs n_samples >= 2, got {n_samples}")
    # Sample without a graph, then score the samples in one teacher-forced pass: backward through
    # ~20 incremental steps of small ops cost 3x the whole pass on a 2-core CPU. Both under the
    # same autocast: the policy sampled is the one whose log-probs are trained.
    with torch.autocast(features.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        with torch.no_grad():
            tokens, _, mask = sample(decoder, features, start_id, end_id, max_len, n_samples, banned_ids, generator)
        logp = sequence_log_probs(decoder, features, tokens, mask, n_samples, start_id, end_id, banned_ids)
    rewards = sample_rewards(scorer, tokens, mask, image_refs, n_samples, words)
    baseline = leave_one_out_baseline(rewards)
    advantage = (rewards - baseline).reshape(-1).to(logp.device)
    loss = -(advantage * logp.sum(1)).mean()
    stats = {"reward": rewards.mean().item(), "baseline": baseline.mean().item(),
             "sample_length": mask.sum(1).float().mean().item()}
    return loss, stats


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    if generator is not None and generator.device.type != "cpu":
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    else:
        order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    # A one-image batch cannot train BatchNorm (show_tell): fold it into the previous batch.
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def scst_epoch(decoder: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
               image_refs: Sequence, scorer: CiderD | Sequence[CiderD], *, start_id: int | torch.Tensor,
               end_id: int, max_len: int, n_samples: int = 5, batch_size: int = 64, banned_ids: Iterable[int] = (),
               generator: torch.Generator | None = None, grad_clip: float = 5.0,
               scheduler=None, words: Words | Sequence[Words] | None = None,
               amp_dtype: torch.dtype | None = None) -> dict:
    """One SCST pass over the images (row i of `features` has the references image_refs[i]),
    in shuffled batches of `batch_size` images (x n_samples captions each). The decoder runs in
    eval mode (no dropout, BatchNorm running statistics): the policy sampled and improved is the
    one decoding uses at test time, and the teacher-forced pass that scores the samples sees the
    same network that drew them (train-mode dropout would draw a different mask for each).
    Measured on the default (README: Decoders): equal or better grounded figures than sampling
    in train mode, and ~20% less time per epoch. The previous mode is restored. Returns sample-weighted means of reward, baseline, sample
    length and loss.

    Under torchrun (pipeline.distributed.ddp) every rank takes rank 0's batch order and samples
    its share of each batch with its own `generator`; gradients are averaged over the ranks
    before each update, so `batch_size` images make one update whatever the number of ranks."""
    if len(image_refs) != len(features):
        raise ValueError(f"{len(features)} images of features but {len(image_refs)} reference lists")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    banned_ids = tuple(banned_ids)  # iterated once per batch
    device = next(decoder.parameters()).device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    t0 = time.time()
    batches = shard(broadcast(_batches(len(features), batch_size, generator)))
    sampler = _sampling_generator(generator, device)  # derived once, then it advances
    was_training = decoder.training
    decoder.eval()
    sums = {"reward": 0.0, "baseline": 0.0, "sample_length": 0.0, "loss": 0.0}
    for idx in batches:
        feats = features[idx.to(features.device)].to(device)
        rows = idx.tolist()
        loss, stats = scst_loss(decoder, feats, [image_refs[i] for i in rows], _take(scorer, rows),
                                _take(start_id, rows), end_id, max_len, n_samples, banned_ids, sampler,
                                _take(words, rows), amp_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params)
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for key in ("reward", "baseline", "sample_length"):
            sums[key] += stats[key] * len(idx)
        sums["loss"] += loss.item() * len(idx)
    decoder.train(was_training)
    *totals, images = all_sum(*sums.values(), sum(len(idx) for idx in batches))
    out = {key: value / images for key, value in zip(sums, totals)}
    out.update(images=images, steps=len(batches), seconds=time.time() - t0)
    logger.info("scst: reward %.3f (baseline %.3f), sample length %.1f, %d steps in %.1fs",
                out["reward"], out["baseline"], out["sample_length"], out["steps"], out["seconds"])
    return out


@torch.no_grad()
def greedy_reward(decoder: nn.Module, features: torch.Tensor, image_refs: Sequence, scorer: CiderD,
                  start_id: int, end_id: int, max_len: int, banned_ids: Iterable[int] = (),
                  batch_size: int = 256, words: Words | None = None) -> float:
    """Mean CIDEr-D reward of greedy captions (eval mode; the decoder's mode is restored):
    what SCST should raise, for logging and tests."""
    was_training = decoder.training
    decoder.eval()
    total = 0.0
    try:
        for lo in range(0, len(features), batch_size):
            feats = features[lo: lo + batch_size].to(next(decoder.parameters()).device)
            out = greedy(decoder, feats, start_id, end_id, max_len, banned_ids)
            for j, seq in enumerate(out.tokens):
                # greedy() strips <end>: a caption shorter than max_len did emit it.
                ended = len(seq) < max_len and scorer.end is not None
                cand = [*seq, end_id] if ended else list(seq)
                total += scorer.score(words(cand) if words else cand, image_refs[lo + j])
    finally:
        decoder.train(was_training)
    return total / max(len(features), 1)
