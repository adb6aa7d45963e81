"""Decoding (greedy, beam search) and the words-to-patches maps of a finished caption.

Decoding recomputes the whole prefix each step (captions are short; no cache to get wrong).
Maps come from ONE teacher-forced pass over <start> + the generated tokens: row i is the
last decoder layer's cross-attention while predicting generated token i (the <end> token
included), averaged over heads, so each map is labelled by the token id it predicted, never
by splitting the decoded string.
"""

from __future__ import annotations

import torch

from vitlab.captions.dataset import CaptionSet, to_images
from vitlab.captions.model import Captioner
from vitlab.captions.vocab import Vocab


@torch.no_grad()
def greedy(
    model: Captioner, images: torch.Tensor, start: int, end: int, max_len: int | None = None
) -> list[list[int]]:
    """Greedy captions for normalised images (B, 3, H, W).

    Each returned id list stops right after its first <end> (included) or at max_len - 1
    generated tokens (the sequence with <start> is at most max_len long).
    """
    model.eval()
    max_len = min(max_len or model.cfg.max_len, model.cfg.max_len)
    memory = model.encode(images)
    b = len(images)
    seqs = torch.full((b, 1), start, dtype=torch.long, device=images.device)
    done = torch.zeros(b, dtype=torch.bool, device=images.device)
    for _ in range(max_len - 1):
        logits, _ = model.decode(memory, seqs)
        nxt = logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, end), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done |= nxt == end
        if bool(done.all()):
            break
    out = []
    for row in seqs[:, 1:].tolist():
        out.append(row[: row.index(end) + 1] if end in row else row)
    return out


@torch.no_grad()
def beam_search(
    model: Captioner,
    images: torch.Tensor,
    start: int,
    end: int,
    beam_size: int = 3,
    max_len: int | None = None,
    length_penalty: float = 0.0,
) -> list[list[int]]:
    """Beam-search captions, batched over images and beams.

    A hypothesis ends when it emits <end>; the best finished one by
    sum(log p) / len**length_penalty wins (0 = plain sum, as in most captioning code). An
    image stops searching once no live beam can beat its best finished one (log-probs only
    decrease, so with length_penalty 0 this is exact). beam_size 1 equals greedy.
    """
    model.eval()
    k = beam_size
    max_len = min(max_len or model.cfg.max_len, model.cfg.max_len)
    memory = model.encode(images)
    b, dev = len(images), images.device
    mem = memory.repeat_interleave(k, dim=0)
    seqs = torch.full((b * k, 1), start, dtype=torch.long, device=dev)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    active = torch.ones(b, dtype=torch.bool)

    def norm(score: float, length: int) -> float:
        return score / (length**length_penalty) if length_penalty else score

    for _ in range(max_len - 1):
        logits, _ = model.decode(mem, seqs)
        logp = logits[:, -1].float().log_softmax(-1)  # (b*k, V)
        v = logp.shape[-1]
        cand = (scores.view(b * k, 1) + logp).view(b, k * v)
        top, idx = cand.topk(min(2 * k, k * v), dim=1)  # 2k: enough to refill after <end>
        beam_of, word = idx // v, idx % v
        new_seqs = seqs.new_full((b, k, seqs.shape[1] + 1), end)
        new_scores = torch.full((b, k), float("-inf"), device=dev)
        prev = seqs.view(b, k, -1)
        for i in range(b):
            if not active[i]:
                continue
            filled = 0
            for rank in range(top.shape[1]):
                s = float(top[i, rank])
                if s == float("-inf"):
                    break
                seq = [*prev[i, beam_of[i, rank]].tolist(), int(word[i, rank])]
                if int(word[i, rank]) == end:
                    if rank < k:  # only <end>s among the k best count (as fairseq)
                        finished[i].append((norm(s, len(seq) - 1), seq[1:]))
                    continue
                new_seqs[i, filled] = torch.tensor(seq, device=dev)
                new_scores[i, filled] = s
                filled += 1
                if filled == k:
                    break
            best_done = max((f[0] for f in finished[i]), default=float("-inf"))
            best_live = float(new_scores[i].max())
            if len(finished[i]) >= k or (length_penalty == 0 and best_done >= best_live):
                active[i] = False
        seqs, scores = new_seqs.view(b * k, -1), new_scores
        if not bool(active.any()):
            break
    out = []
    for i in range(b):
        if finished[i]:
            out.append(max(finished[i], key=lambda f: f[0])[1])
        else:  # no <end> within max_len: the best live beam, cut at max_len - 1 tokens
            best = int(scores[i].argmax())
            out.append(seqs.view(b, k, -1)[i, best, 1:].tolist())
    return out


@torch.no_grad()
def attention_maps(
    model: Captioner, images: torch.Tensor, generated: list[list[int]], start: int, pad: int
) -> list[torch.Tensor]:
    """Per image, the maps (T, grid, grid) of its generated tokens (T = len(generated[i])).

    One teacher-forced pass over <start> + tokens[:-1]: row i predicts generated token i.
    Rows are the last decoder layer's cross-attention averaged over heads; each sums to one
    over the patches.
    """
    model.eval()
    g = model.encoder.grid
    lengths = [len(s) for s in generated]
    t = max(lengths)
    inputs = torch.full((len(generated), t), pad, dtype=torch.long, device=images.device)
    for i, s in enumerate(generated):
        inputs[i, : len(s)] = torch.tensor([start, *s[:-1]], dtype=torch.long)
    _, cross = model(images, inputs)  # (B, H, T, P)
    maps = cross.mean(dim=1).float().cpu()
    return [maps[i, :n].reshape(n, g, g) for i, n in enumerate(lengths)]


@torch.no_grad()
def generate(
    model: Captioner,
    data: CaptionSet,
    vocab: Vocab,
    device: torch.device,
    *,
    beam_size: int = 1,
    batch_size: int = 256,
) -> list[list[int]]:
    """Generated id lists (ending in <end> when produced) for every image of `data`."""
    out: list[list[int]] = []
    for lo in range(0, len(data), batch_size):
        x = to_images(data.images[lo : lo + batch_size], device)
        if beam_size > 1:
            out += beam_search(model, x, vocab.start, vocab.end, beam_size)
        else:
            out += greedy(model, x, vocab.start, vocab.end)
    return out
