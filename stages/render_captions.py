"""Stage `render_captions`: caption the whole test split, score it, draw the chosen images.

Writes (each atomically):
- reports/captions/metrics.json: BLEU-1..4, CIDEr-D and exact match per decoding (greedy and,
  when captions.decode.beam_size > 1, beam search), grounding of object words next to a
  uniform map's value, and `rows` for the metrics table (model `captioner`);
- reports/captions/test_captions.json: every test image's references and generated captions;
- reports/captions/figures/: for each index in captions.render.images, `<name>.png` (image,
  caption, one panel per generated token, <end> included), `<name>.npy` (the raw maps,
  (T, grid, grid) float32, row i = generated token i) and `<name>.json` (tokens and ids).

With a pretrained arch (captions.model.arch catr_*), CATR from captions.catr captions every
image fetch_captions kept (each encoded once, greedy decoding as released) and draws each as
`<image stem>.{png,npy,json}` (maps (T, grid_h, grid_w)); metrics.json holds BLEU-1..4 and
CIDEr-D when the images have references (a Karpathy test split), else the count and no rows.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from stages._common import cli, load_params
from vitlab.captions import pretrained, store
from vitlab.captions.build import build_captioner
from vitlab.captions.dataset import CaptionSet, to_images
from vitlab.captions.decode import attention_maps, generate
from vitlab.captions.metrics import TOKENIZER, Grounding, caption_scores, tokenize
from vitlab.captions.model import Captioner, load_captioner
from vitlab.captions.render import caption_figure, save_figure
from vitlab.captions.scenes import word_kind
from vitlab.captions.vocab import Vocab
from vitlab.core import config, contract
from vitlab.core.atomic import atomic_dir, write_json
from vitlab.core.errors import VitlabError
from vitlab.vit import runtime

MAPS_ROWS = "row i = last decoder layer cross-attention (mean over heads) while predicting token i"


def grounding(
    model: Captioner, data: CaptionSet, vocab: Vocab, device: torch.device, batch: int = 256
) -> dict | None:
    """Object-word grounding over `data`, maps from one teacher-forced pass over each
    reference caption (row i = the map while predicting reference token i)."""
    if data.masks is None or data.token_objects is None:
        return None
    acc = Grounding()
    for lo in range(0, len(data), batch):
        idx = range(lo, min(lo + batch, len(data)))
        refs = [vocab.encode(data.captions[i][0])[1 : model.cfg.max_len] for i in idx]
        x = to_images(data.images[lo : lo + batch], device)
        maps = attention_maps(model, x, refs, vocab.start, vocab.pad)
        for i, m in zip(idx, maps, strict=True):
            tokens = data.captions[i][0]
            n = min(len(tokens), len(m))  # rows for the words; the last row predicts <end>
            acc.add(
                m.numpy()[:n],
                data.masks[i],
                data.token_objects[i][:n],
                [word_kind(w) for w in tokens[:n]],
            )
    return acc.result()


def metric_rows(model: str, decodings: dict[str, dict], ground: dict | None) -> list[dict]:
    """One metrics-table row per decoding of `model` (`captioner`, or a pretrained arch)."""
    rows = []
    for name, scores in decodings.items():
        kind = "beam" if name.startswith("beam") else "greedy"
        row = {"model": model, "variant": name, "kind": kind, **scores}
        if ground is not None:
            row.update(
                energy_words=ground["energy"],
                energy_uniform=ground["energy_uniform"],
                pointing_words=ground["pointing"],
                pointing_uniform=ground["pointing_uniform"],
            )
        rows.append(row)
    return rows


def render_trained(params: config.Params) -> None:
    """Caption, score and draw with the captioner train_captioner trained."""
    c = params.captions
    device = runtime.resolve(params.runtime).device
    vocab = Vocab.load(contract.CAPTIONER / "vocab.json")
    model = build_captioner(c, len(vocab), for_training=False)
    load_captioner(model, contract.CAPTIONER / "model.pt").to(device).eval()
    test = store.load_split(store.read_items(contract.CAPTION_DATA), "test")
    if test.images.shape[1] != model.cfg.image_size:
        raise VitlabError(
            f"{contract.CAPTION_DATA} holds {test.images.shape[1]}-px images, the captioner "
            f"expects "
            f"{model.cfg.image_size}; rerun `dvc repro fetch_captions train_captioner`"
        )
    beam, headline = c.decode.beam_size, c.decode.headline
    if headline == "beam" and beam < 2:
        raise VitlabError("captions.decode.headline beam needs captions.decode.beam_size >= 2")
    decoded = {"greedy": generate(model, test, vocab, device)}
    if beam > 1:
        decoded[f"beam{beam}"] = generate(model, test, vocab, device, beam_size=beam)
    headline = f"beam{beam}" if headline == "beam" else "greedy"
    scores = {
        name: caption_scores(test.captions, [vocab.decode(s) for s in seqs])
        for name, seqs in decoded.items()
    }
    ground = grounding(model, test, vocab, device)
    metrics = {
        "model": "captioner",
        "split": "test",
        "images": len(test),
        "headline": headline,
        "tokenizer": TOKENIZER,
        "decodings": scores,
        "grounding": ground,
        "rows": metric_rows("captioner", scores, ground),
    }
    chosen = list(c.render.images)
    bad = [i for i in chosen if not 0 <= i < len(test)]
    if bad:
        raise VitlabError(
            f"captions.render.images {bad} are outside the test split (0..{len(test) - 1})"
        )
    drawn = []
    with atomic_dir(contract.CAPTION_FIGURES) as fig_dir:
        seqs = [decoded[headline][i] for i in chosen]
        maps = (
            attention_maps(
                model, to_images(test.images[chosen], device), seqs, vocab.start, vocab.pad
            )
            if chosen
            else []
        )
        for i, ids, m in zip(chosen, seqs, maps, strict=True):
            name = f"test_{i:05d}"
            labels = [f"{vocab.label(t)} ({t})" for t in ids]
            caption = " ".join(vocab.decode(ids))
            reference = " ".join(test.captions[i][0])
            save_figure(
                caption_figure(test.images[i], labels, m.numpy(), caption, reference),
                fig_dir / f"{name}.png",
            )
            np.save(fig_dir / f"{name}.npy", m.numpy().astype(np.float32))
            (fig_dir / f"{name}.json").write_text(
                json.dumps(
                    {
                        "image": test.ids[i],
                        "caption": caption,
                        "reference": reference,
                        "token_ids": ids,
                        "tokens": [vocab.label(t) for t in ids],
                        "maps": f"{name}.npy",
                        "rows": MAPS_ROWS,
                    },
                    indent=1,
                )
            )
            drawn.append(
                contract.Figure(
                    png=f"{name}.png", maps=f"{name}.npy", group="captions", title=caption,
                    variant=headline, split="test", images=(i,),
                    info={"image": test.ids[i], "caption": caption, "reference": reference,
                          "token_ids": ids, "tokens": [vocab.label(t) for t in ids],
                          "meta": f"{name}.json"},
                )
            )  # fmt: skip
        contract.write_manifest(fig_dir, drawn, model="captioner", stage="render_captions")
    write_json(
        contract.TEST_CAPTIONS,
        [
            {
                "image": test.ids[i],
                "references": [" ".join(r) for r in test.captions[i]],
                **{name: " ".join(vocab.decode(seqs[i])) for name, seqs in decoded.items()},
            }
            for i in range(len(test))
        ],
    )
    write_json(contract.CAPTION_METRICS, metrics)
    s = scores[headline]
    g = ""
    if ground is not None:
        g = (
            f", object words: energy {ground['energy']:.3f} "
            f"(uniform {ground['energy_uniform']:.3f}), pointing {ground['pointing']:.3f} "
            f"(uniform {ground['pointing_uniform']:.3f})"
        )
    print(
        f"render_captions: {headline} BLEU-4 {s['bleu_4']:.4f}, CIDEr-D {s['cider_d']:.3f}, "
        f"exact {s['exact_match']:.3f}{g}"
    )


def render_catr(params: config.Params) -> None:
    """Caption every kept image with the released CATR, draw each, score when references exist."""
    c = params.captions
    arch, square = c.model.arch, c.catr.square
    rt = runtime.resolve(params.runtime)
    photos = store.read_originals(contract.CAPTION_DATA)
    model, vocab, weights, vocab_path = pretrained.load(c.catr, c.catr_version)
    model.to(rt.device)
    results = []
    for n, photo in enumerate(photos, 1):
        t0 = time.perf_counter()
        results.append(pretrained.caption_photo(model, vocab, photo.path, square, rt.device))
        if rt.progress:
            print(
                f"{n}/{len(photos)} {photo.name}: {results[-1].caption} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
            )
    scored = all(p.references for p in photos)  # a Karpathy split; a photo folder has none
    split = "test" if scored else "photos"
    drawn = []
    with atomic_dir(contract.CAPTION_FIGURES) as fig_dir:
        for i, (photo, r) in enumerate(zip(photos, results, strict=True)):
            name = photo.name
            reference = " ".join(photo.references[0]) if scored else None
            labels = [f"{t} ({k})" for t, k in zip(r.tokens, r.token_ids, strict=True)]
            save_figure(
                caption_figure(r.shown, labels, r.maps, r.caption, reference, extent=r.extent),
                fig_dir / f"{name}.png",
            )
            np.save(fig_dir / f"{name}.npy", r.maps)
            info = {
                "image": photo.key,
                "caption": r.caption,
                "reference": reference,
                "token_ids": r.token_ids,
                "tokens": r.tokens,
            }
            write_json(
                fig_dir / f"{name}.json",
                {
                    **info,
                    "maps": f"{name}.npy",
                    "grid": list(r.maps.shape[1:]),
                    "square": square,
                    "rows": MAPS_ROWS,
                },
            )
            drawn.append(
                contract.Figure(
                    png=f"{name}.png",
                    maps=f"{name}.npy",
                    group="captions",
                    title=r.caption,
                    variant="greedy",
                    split=split,
                    images=(i,),
                    info={**info, "meta": f"{name}.json"},
                )
            )
        contract.write_manifest(
            fig_dir,
            drawn,
            model=arch,
            stage="render_captions",
            weights=str(weights),
            vocab=str(vocab_path),
            square=square,
        )
    write_json(
        contract.TEST_CAPTIONS,
        [
            {
                "image": p.key,
                "references": [" ".join(ref) for ref in p.references],
                "greedy": r.caption,
            }
            for p, r in zip(photos, results, strict=True)
        ],
    )
    metrics = {"model": arch, "split": split, "images": len(results)}  # one caption each
    summary = f"{len(results)} images captioned"
    if scored:
        scores = caption_scores(
            [p.references for p in photos], [tokenize(r.caption) for r in results]
        )
        decodings = {"greedy": scores}
        metrics.update(
            headline="greedy",
            tokenizer=TOKENIZER,
            decodings=decodings,
            grounding=None,
            rows=metric_rows(arch, decodings, None),
        )
        summary += f", BLEU-4 {scores['bleu_4']:.4f}, CIDEr-D {scores['cider_d']:.3f}"
    else:
        metrics["rows"] = []  # no references, nothing to score; summarize reads the rows
    write_json(contract.CAPTION_METRICS, metrics)
    print(f"render_captions: {arch} ({weights.name}, square {square}), {summary}")


@cli
def main() -> None:
    params = load_params()
    if params.captions.catr_version is not None:
        render_catr(params)
    else:
        render_trained(params)


if __name__ == "__main__":
    main()
