"""The full-size CATR captioner on one 299 px photo: time and peak memory, against the release.

Builds CATR at its released size (84,392,954 weights, seeded random values in the release's
layout: the cost does not depend on the values), preprocesses one generated 640 x 480 photo as
the release does (`square: pad`, a 19 x 19 grid), then measures on this machine:
- encode: the ResNet-101 backbone and the 6-layer encoder, once;
- greedy: vitlab's decoding (the image encoded once) of a whole caption, and its time a token;
- release: the release's predict loop (the whole model, encoder included, called again at
  every step) for the first `--release-tokens` tokens, and the ratio of its time a token to
  vitlab's;
- maps: the per-word cross-attention maps of the finished caption (one decoder pass);
- peak resident memory of the process.
Random weights rarely predict [SEP], so the caption is the longest one (127 tokens): the
worst case of a real caption's time. Writes reports/bench/catr.{json,md}.

    python -m benchmarks.catr_caption
    python -m benchmarks.catr_caption --threads 1 --release-tokens 4
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.captions.catr import (
    Catr,
    CatrConfig,
    greedy_decode,
    preprocess,
    start_caption,
    word_maps,
)
from vitlab.core.atomic import write_json, write_text


def photo(seed: int = 0) -> Image.Image:
    """A 640 x 480 RGB photo-sized image (smooth gradients and noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640] / 640
    base = np.stack([x, y, 1 - x], -1) * 200 + rng.normal(0, 20, (480, 640, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


@torch.no_grad()
def release_predict(model: Catr, image: torch.Tensor, mask: torch.Tensor, tokens: int) -> float:
    """Seconds of the release's loop for `tokens` steps: the whole model called every step."""
    caption, padding = start_caption(model.cfg, [], image.device)
    start = time.perf_counter()
    for i in range(tokens):
        logits, _ = model(image, mask, caption, padding)
        caption[0, i + 1] = int(logits[0, i].argmax(-1))
        padding[0, i + 1] = False
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# CATR with one block a ResNet stage, one encoder and decoder layer and width 16 (8.5M weights,
# most in the ResNet's full-width convolutions): the smoke test's, not a measurement.
TINY = CatrConfig(
    blocks=(1, 1, 1, 1), hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1,
    dim_feedforward=32, vocab_size=200,
)  # fmt: skip


def measure(release_tokens: int, cfg: CatrConfig | None = None) -> dict:
    torch.manual_seed(0)
    model = Catr(cfg).eval()
    weights = sum(t.numel() for t in model.state_dict().values())  # as the release counts
    x, mask = preprocess(photo(), square="pad")
    image, mask = x[None], mask[None]
    with torch.no_grad():
        model.encode(image, mask)  # warm-up: first-call allocations are not the model's cost
        start = time.perf_counter()
        enc = model.encode(image, mask)
        encode_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = greedy_decode(model, enc)
    greedy_s = time.perf_counter() - start
    start = time.perf_counter()
    maps = word_maps(model, enc, ids)
    maps_s = time.perf_counter() - start
    release_s = release_predict(model, image, mask, release_tokens)
    per_token = greedy_s / len(ids)
    release_per_token = release_s / release_tokens
    return {
        "weights": weights,
        "grid": list(enc.grid),
        "tokens": len(ids),
        "maps_shape": list(maps.shape),
        "encode_s": encode_s,
        "greedy_s": greedy_s,
        "greedy_ms_per_token": per_token * 1000,
        "maps_s": maps_s,
        "image_s": encode_s + greedy_s + maps_s,
        "release_tokens": release_tokens,
        "release_ms_per_token": release_per_token * 1000,
        "release_image_s": release_per_token * len(ids),
        "speedup_vs_release": release_per_token / per_token,
        "peak_rss_mib": round(peak_rss_mib()),
    }


def report(r: dict) -> str:
    return "\n".join(
        [
            f"# CATR ({r['size']}, {r['weights']:,} weights) captioning one 299 px photo on "
            f"{r['threads']} CPU thread(s)",
            "",
            f"Grid {r['grid'][0]} x {r['grid'][1]}; caption of {r['tokens']} tokens (random "
            "weights: the longest caption); peak memory "
            f"{r['peak_rss_mib']} MiB.",
            "",
            "| step | seconds |",
            "|---|---|",
            f"| encode (backbone + encoder, once) | {r['encode_s']:.2f} |",
            f"| greedy decoding ({r['greedy_ms_per_token']:.1f} ms a token) "
            f"| {r['greedy_s']:.2f} |",
            f"| word maps (one decoder pass) | {r['maps_s']:.2f} |",
            f"| **one image** | **{r['image_s']:.2f}** |",
            "",
            f"The release's predict loop (the whole model every step), timed over "
            f"{r['release_tokens']} tokens: {r['release_ms_per_token']:.1f} ms a token, so "
            f"{r['release_image_s']:.1f} s for this caption; vitlab's decoding is "
            f"{r['speedup_vs_release']:.1f}x faster a token.",
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--release-tokens", type=int, default=8, help="steps of the release's loop")
    p.add_argument("--tiny", action="store_true", help="a tiny CATR (a smoke test, not a figure)")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.release_tokens < 1:
        p.error("--release-tokens must be >= 1")
    result = measure(args.release_tokens, TINY if args.tiny else None)
    result.update(
        size="tiny" if args.tiny else "full size",
        threads=torch.get_num_threads(),
        machine=platform.processor() or "unknown",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "catr.json", result)
    table = report(result)
    write_text(args.out / "catr.md", table)
    print(table)


if __name__ == "__main__":
    main()
