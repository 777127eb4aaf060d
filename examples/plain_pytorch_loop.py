"""GRPO in a hand-written PyTorch loop with rgpo_fast's fused loss (no trainer framework).

    python examples/plain_pytorch_loop.py --steps 20

Per step: sample G completions per prompt with `model.generate`, score them with the
exact-match reward, turn rewards into group-relative advantages, then one update:
the decoder's last hidden state and the lm_head weight go to `FusedLinearRGPOLoss`, which
computes the per-token log-probs, the clipped policy loss and its aggregation without
materialising the [tokens x vocab] logits. The model is a tiny Qwen2 built locally and
loaded back with from_pretrained (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from rgpo_fast import FusedLinearRGPOLoss
from rgpo_fast.algos import compute_advantages
from rgpo_fast.data.arith import make_arith
from rgpo_fast.data.prompts import encode_prompt
from rgpo_fast.rewards import exact_reward
from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model, load_model_and_tokenizer


def sample(model, tok, prompts: list[list[int]], group: int, max_new_tokens: int):
    """G sampled completions per prompt -> list of (prompt ids, completion ids)."""
    rows = [p for p in prompts for _ in range(group)]
    L = max(len(p) for p in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    for i, p in enumerate(rows):  # left padding for generation
        ids[i, L - len(p):] = torch.tensor(p)
        att[i, L - len(p):] = 1
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model.train()
    samples = []
    for p, seq in zip(rows, out[:, L:].tolist()):
        if tok.eos_token_id in seq:  # keep the EOS: the model must learn to stop
            seq = seq[: seq.index(tok.eos_token_id) + 1]
        else:
            seq = [t for t in seq if t != tok.pad_token_id]
        samples.append((p, seq))
    return samples


def reward(text: str, answer: str) -> float:
    """Exact match, plus a small shaping term (share of digit characters, at most 0.1) so
    that a randomly initialised model already gets reward differences within a group."""
    digits = sum(ch.isdigit() for ch in text) / max(len(text), 1)
    return exact_reward(text, answer) + 0.1 * digits


def right_pad(samples, pad_id: int):
    """(B, L) input ids, attention mask and the (B, L-1) mask of response targets."""
    L = max(len(p) + len(c) for p, c in samples)
    ids = torch.full((len(samples), L), pad_id)
    att = torch.zeros((len(samples), L), dtype=torch.long)
    resp = torch.zeros((len(samples), L - 1), dtype=torch.bool)
    for i, (p, c) in enumerate(samples):
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
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--cache-dir", default=None, help="where the tiny model is built")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)

    spec = TinyModelSpec(num_hidden_layers=a.layers, hidden_size=a.hidden, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=2 * a.hidden, seed=a.seed)
    model, tok = load_model_and_tokenizer(ensure_tiny_model(spec, a.cache_dir))
    problems = make_arith(a.seed, a.steps * a.prompts, "easy")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    # DAPO-style clip-higher and token-mean aggregation; the options map 1:1 to verl/TRL
    # (docs/integrations.md).
    loss_fn = FusedLinearRGPOLoss(clip_low=0.2, clip_high=0.28, loss_agg="token-mean")
    before = [p.detach().clone() for p in model.parameters()]
    losses, rewards_mean = [], []
    for step in range(a.steps):
        batch = problems[step * a.prompts : (step + 1) * a.prompts]
        prompts = [encode_prompt(tok, ex.problem) for ex in batch]
        samples = sample(model, tok, prompts, a.group, a.max_new_tokens)
        answers = [ex.answer for ex in batch for _ in range(a.group)]
        texts = [tok.decode(c, skip_special_tokens=True) for _, c in samples]
        rewards = torch.tensor([reward(t, ans) for t, ans in zip(texts, answers)])
        groups = torch.arange(a.prompts).repeat_interleave(a.group)
        adv = compute_advantages("grpo", rewards, groups)  # (B,) broadcast to tokens

        ids, att, resp = right_pad(samples, tok.pad_token_id)
        hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
        # One update per rollout: no old log-probs needed (the ratio is exp(l - sg(l)) = 1).
        loss, metrics = loss_fn(hidden, model.lm_head.weight, ids[:, 1:], resp, adv)
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
