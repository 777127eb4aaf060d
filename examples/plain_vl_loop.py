"""GRPO on a vision-language model in a hand-written PyTorch loop with rgpo_fast's fused loss.

    python examples/plain_vl_loop.py --steps 20

The text example (plain_pytorch_loop.py) with images: the model is a tiny Qwen2-VL built
locally and loaded back with `from_pretrained`, its processor builds the prompts (chat
template + images), `model.generate` samples from image + text, and the update runs the
model's own multimodal forward (vision tower, image features in the placeholders, M-RoPE
positions) to the last hidden state, which goes with the lm_head weight to
`FusedLinearRGPOLoss`: the loss only ever sees the language model's hidden states, so it
is the same call as for text, and the [tokens x vocab] logits are never materialised. The
task is the built-in `shapes` (rgpo_fast/data/shapes.py): the colour of the shapes in the
image picks a value, then a little arithmetic. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from rgpo_fast import FusedLinearRGPOLoss
from rgpo_fast.algos import compute_advantages
from rgpo_fast.data.multimodal import load_processor
from rgpo_fast.data.shapes import make_shapes
from rgpo_fast.rewards import exact_reward
from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer
from rgpo_fast.trainer.tiny_vl_model import VISION_TOKENS, TinyVLSpec, ensure_tiny_vl_model


def prompt_text(processor, problem: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def sample(model, processor, batch, group: int, max_new_tokens: int):
    """G completions per problem -> (prompt ids, completion ids, image) per sample."""
    tok = processor.tokenizer
    texts = [prompt_text(processor, ex.problem) for ex in batch for _ in range(group)]
    images = [ex.images[0] for ex in batch for _ in range(group)]
    enc = processor(text=texts, images=images, padding=True, return_tensors="pt")  # left-padded
    # The image markers are prompt-only: a sampled one would be taken for an image slot.
    banned = [[tok.convert_tokens_to_ids(t)] for t in VISION_TOKENS]
    model.eval()
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, bad_words_ids=banned,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model.train()
    L = enc["input_ids"].shape[1]
    samples = []
    for row, seq, img in zip(enc["input_ids"], out[:, L:].tolist(), images):
        prompt = row[row != tok.pad_token_id].tolist()
        if tok.eos_token_id in seq:  # keep the EOS: the model must learn to stop
            seq = seq[: seq.index(tok.eos_token_id) + 1]
        else:
            seq = [t for t in seq if t != tok.pad_token_id]
        samples.append((prompt, seq, img))
    return samples


def reward(text: str, answer: str) -> float:
    """Exact match, plus a small shaping term (share of digit characters, at most 0.1) so
    that a randomly initialised model already gets reward differences within a group."""
    digits = sum(ch.isdigit() for ch in text) / max(len(text), 1)
    return exact_reward(text, answer) + 0.1 * digits


def right_pad(samples, pad_id: int):
    """(B, L) input ids, attention mask and the (B, L-1) mask of response targets."""
    L = max(len(p) + len(c) for p, c, _ in samples)
    ids = torch.full((len(samples), L), pad_id)
    att = torch.zeros((len(samples), L), dtype=torch.long)
    resp = torch.zeros((len(samples), L - 1), dtype=torch.bool)
    for i, (p, c, _) in enumerate(samples):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        att[i, : len(p) + len(c)] = 1
        resp[i, len(p) - 1 : len(p) - 1 + len(c)] = True  # target t is token t + 1
    return ids, att, resp


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=4, help="G, samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cache-dir", default=None, help="where the tiny model is built")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)

    model_dir = ensure_tiny_vl_model(TinyVLSpec(hidden_size=64, intermediate_size=128,
                                                seed=a.seed), a.cache_dir)
    model, tok = load_model_and_tokenizer(model_dir)
    processor = load_processor(model_dir)
    model.model.visual.requires_grad_(False)  # the vision tower stays as it is
    image_id = model.config.image_token_id
    problems = make_shapes(a.seed, a.steps * a.prompts, "easy")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr,
                            weight_decay=0.0)
    loss_fn = FusedLinearRGPOLoss(clip_low=0.2, clip_high=0.28, loss_agg="token-mean")
    before = [p.detach().clone() for p in model.parameters()]
    losses, rewards_mean = [], []
    for step in range(a.steps):
        batch = problems[step * a.prompts : (step + 1) * a.prompts]
        samples = sample(model, processor, batch, a.group, a.max_new_tokens)
        answers = [ex.answer for ex in batch for _ in range(a.group)]
        texts = [tok.decode(c, skip_special_tokens=True) for _, c, _ in samples]
        rewards = torch.tensor([reward(t, ans) for t, ans in zip(texts, answers)])
        groups = torch.arange(a.prompts).repeat_interleave(a.group)
        adv = compute_advantages("grpo", rewards, groups)

        ids, att, resp = right_pad(samples, tok.pad_token_id)
        pixels = processor.image_processor(images=[img for *_, img in samples],
                                           return_tensors="pt")
        # The model's multimodal body: image features into the placeholders, M-RoPE
        # positions from where they are (mm_token_type_ids: 1 on image tokens).
        hidden = model.model(input_ids=ids, attention_mask=att, **pixels,
                             mm_token_type_ids=(ids == image_id).int()).last_hidden_state
        # One update per rollout: no old log-probs needed (the ratio is exp(l - sg(l)) = 1).
        loss, metrics = loss_fn(hidden[:, :-1], model.lm_head.weight, ids[:, 1:], resp, adv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        rewards_mean.append(float(rewards.mean()))
        print(f"step {step + 1}: reward {rewards.mean():.3f} loss {losses[-1]:+.4f} "
              f"tokens {int(metrics['tokens/policy'])}", flush=True)  # fmt: skip
    changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    result = {"steps": a.steps, "losses": losses, "reward_mean": rewards_mean,
              "finite": all(math.isfinite(x) for x in losses),
              "params_changed": changed}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
