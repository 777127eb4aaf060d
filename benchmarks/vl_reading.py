"""What the tiny Qwen2-VL learns to read from an image in a few hundred supervised steps.

    python benchmarks/vl_reading.py                      # all probes, seed 0
    python benchmarks/vl_reading.py --steps 800 --seeds 0 1 2

Each probe trains the built-in tiny vision-language model (trainer/tiny_vl_model.py) by
teacher-forced cross-entropy on one reading task and reports, on 128 fresh images every 100
steps, the accuracy of the answer tokens that need the image (teacher-forced): the first
letter of the colour, or every cell's letter:

    colour          the colour of the shapes in a 3 x 3 grid (one colour per image): a read
                    from any image token; the visual step of the `shapes` task
    colour-trained  the same, with the vision tower trained at the warm start's lr (3e-3)
    cells-N         the letters (R, G, B, . for empty) of a row of N cells, left to right:
                    a read by position (the image's columns are told apart only through
                    M-RoPE's slowest rotary frequencies)

Chance: 1/3 for colour; 1/4 per cell. These numbers chose the `shapes` task
(data/shapes.py) and `model.freeze_vision`'s default; docs/learning.md has the run.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch


def make_probe(name: str, rng: random.Random):
    """(question, answer text, image) drawer of probe `name`."""
    from rgpo_fast.data.shapes import COLOURS, _cells, draw_shapes

    def colour():
        c = rng.choice(list(COLOURS))
        return "What colour?", c, draw_shapes(_cells(rng), COLOURS[c])

    def cells(n: int):
        from PIL import Image, ImageDraw

        rgb = {"R": COLOURS["red"], "G": COLOURS["green"], "B": COLOURS["blue"]}

        def draw():
            row = [rng.choice("RGB.") for _ in range(n)]
            img = Image.new("RGB", (28 * n, 28), (255, 255, 255))
            pen = ImageDraw.Draw(img)
            for c, letter in enumerate(row):
                if letter != ".":
                    box = (28 * c + 5, 5, 28 * c + 23, 23)
                    (pen.rectangle if rng.random() < 0.5 else pen.ellipse)(box, fill=rgb[letter])
            return "Read the row.", "".join(row), img
        return draw

    if name.startswith("cells-"):
        return cells(int(name.split("-")[1]))
    return colour


def run_probe(name: str, steps: int, seed: int, cache_dir: str | None) -> list[dict]:
    from rgpo_fast import vlm
    from rgpo_fast.data.multimodal import PromptEncoder, collate_vision, load_processor
    from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer
    from rgpo_fast.trainer.tiny_vl_model import TinyVLSpec, ensure_tiny_vl_model

    torch.manual_seed(seed)
    model_dir = ensure_tiny_vl_model(TinyVLSpec(seed=seed), cache_dir)
    model, tok = load_model_and_tokenizer(model_dir)
    enc = PromptEncoder(tok, load_processor(model_dir))
    if name != "colour-trained":
        vlm.freeze_vision(model)
    rng = random.Random(f"{name}:{seed}")
    draw = make_probe(name.removesuffix("-trained"), rng)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    read = 1 if name.startswith("colour") else int(name.split("-")[1])  # tokens to read

    def batch(k: int):
        rows = [draw() for _ in range(k)]
        vision = [enc.vision([img]) for _, _, img in rows]
        seqs = [(enc.encode(q, vision=v), tok(a, add_special_tokens=False)["input_ids"]
                 + [tok.eos_token_id]) for (q, a, _), v in zip(rows, vision)]  # fmt: skip
        L = max(len(p) + len(r) for p, r in seqs)
        ids = torch.full((k, L), tok.pad_token_id)
        att = torch.zeros_like(ids)
        labels = torch.full((k, L), -100)
        for i, (p, r) in enumerate(seqs):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            att[i, : len(p) + len(r)] = 1
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        lens = torch.tensor([len(p) for p, _ in seqs])
        return ids, att, labels, collate_vision(vision), lens

    def logits_of(ids, att, vision, lens):
        slots = vlm.image_slots(model, ids, lens)
        hidden = model.model(inputs_embeds=vlm.embed(model, ids, vision, slots),
                             attention_mask=att, position_ids=vlm.position_ids(
                                 model, ids, att, vision, slots)).last_hidden_state
        return model.lm_head(hidden)[:, :-1]

    out, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        ids, att, labels, vision, lens = batch(32)
        logits = logits_of(ids, att, vision, lens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                ids, att, labels, vision, lens = batch(128)
                pred = logits_of(ids, att, vision, lens).argmax(-1)
                rows = torch.arange(len(lens))
                # position lens - 1 + j predicts answer token j (the first is at lens)
                hits = [(pred[rows, lens - 1 + j] == labels[rows, lens + j]).float()
                        for j in range(read)]
                acc = torch.stack(hits).mean().item()
            out.append({"probe": name, "seed": seed, "step": step, "loss": round(loss.item(), 4),
                        "read_acc": round(acc, 3),
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", nargs="+",
                    default=["colour", "colour-trained", "cells-3", "cells-4", "cells-6"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        for name in a.probes:
            rows += run_probe(name, a.steps, seed, a.cache_dir)
    print("\nprobe            seed  read accuracy at steps " +
          " ".join(str(r["step"]) for r in rows if r["probe"] == a.probes[0]
                   and r["seed"] == a.seeds[0]))
    for name in a.probes:
        for seed in a.seeds:
            accs = [r["read_acc"] for r in rows if r["probe"] == name and r["seed"] == seed]
            print(f"{name:<16} {seed:>4}  " + " ".join(f"{x:.3f}" for x in accs))
    return rows


if __name__ == "__main__":
    main()
