"""Log-probs of a truncated sampler (top-k / top-p): thresholds, engine and trainer agree."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rgpo_fast import fused_linear_logprobs
from rgpo_fast.ops.truncation import row_thresholds
from rgpo_fast.oracle import sampler_support
from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.rollout.hf import HFEngine, sample_next


@pytest.mark.parametrize("top_p, top_k", [(0.8, 0), (0.5, 0), (1.0, 7), (0.9, 12), (0.3, 3),
                                          (0.999, 0)])
def test_thresholds_keep_exactly_the_samplers_support(top_p, top_k):
    """kept = z >= threshold, plus the target, is the oracle's support written token by
    token from the engines' rule; the threshold lies strictly between kept and dropped."""
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(64, 300, generator=g)
    t = torch.randint(0, 300, (64,), generator=g)
    thr = row_thresholds(z, top_p, top_k)
    kept = (z >= thr[:, None]) | torch.nn.functional.one_hot(t, 300).bool()
    assert torch.equal(kept, sampler_support(z, t, top_p, top_k))
    core = z >= thr[:, None]
    assert bool((z - thr[:, None]).abs().min() > 0)  # never on a logit
    if top_k:
        assert int(core.sum(-1).max()) <= top_k
    assert bool(core.any(-1).all())  # the most likely token always survives


def test_engine_samples_inside_the_support_and_reports_its_logprob():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(256, 50, generator=g)
    for top_p, top_k in ((0.7, 0), (1.0, 5), (0.9, 10)):
        ids, lp = sample_next(logits, 0.8, top_p, g, top_k)
        z = logits / 0.8
        # the argmax is always kept, so as "target" it adds nothing: the sampler's own set
        strict = sampler_support(z, z.argmax(-1), top_p, top_k)
        assert bool(strict.gather(1, ids[:, None]).all())
        assert int(strict.sum()) < strict.numel() // 2  # the truncation does drop tokens
        want = torch.log_softmax(z.masked_fill(~strict, float("-inf")), -1).gather(
            1, ids[:, None]).squeeze(1)
        assert torch.allclose(lp, want, atol=1e-6)


def _tiny_lm(vocab=256):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    lm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # a peaked next-token distribution, as a trained model has
        lm.lm_head.weight.mul_(40.0)
    return lm


def _trainer_logprobs(lm, prompt, completions, **sampler):
    """Per generated token: the fused op's log-prob of it on hidden states from a fresh
    forward of prompt + completion (as the trainer recomputes them)."""
    out = []
    for c in completions:
        ids = torch.tensor([prompt + list(c.token_ids)])
        with torch.no_grad():
            hidden = lm.model(input_ids=ids).last_hidden_state[0, :-1]
            lp, _ = fused_linear_logprobs(hidden, lm.lm_head.weight, ids[0, 1:], impl="torch",
                                          **sampler)
        out.append(lp[len(prompt) - 1:])
    return torch.cat(out)


def test_on_policy_ratio_is_one_at_top_p_0_8():
    """Before any update, exp(trainer - engine) over the sampled tokens averages 1 within
    1e-3 when the trainer follows the sampler's top_p, and is visibly biased when it scores
    the tokens with the full softmax (what rgpo_fast did before)."""
    lm = _tiny_lm()
    engine = HFEngine(lm, eos_token_ids=[0], pad_token_id=0)
    prompt = [5, 17, 42, 9]
    out = engine.generate([prompt], SamplingParams(n=16, max_new_tokens=24, temperature=1.0,
                                                   top_p=0.8, seed=1))[0]
    engine_lp = torch.cat([torch.tensor(c.logprobs) for c in out.completions])
    assert engine_lp.numel() > 200
    matched = _trainer_logprobs(lm, prompt, out.completions, top_p=0.8)
    full = _trainer_logprobs(lm, prompt, out.completions)
    ratio = torch.exp(matched - engine_lp).mean().item()
    biased = torch.exp(full - engine_lp).mean().item()
    assert abs(ratio - 1.0) < 1e-3, ratio
    assert biased < 0.97, biased  # the full softmax puts the dropped tail's mass elsewhere


def test_logprobs_refuse_a_bad_sampler_option():
    h, w, t = torch.randn(3, 8), torch.randn(20, 8), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="top_p must be in"):
        fused_linear_logprobs(h, w, t, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be an int"):
        fused_linear_logprobs(h, w, t, top_k=-1)


def test_every_candidate_tier_finds_the_same_threshold_as_a_full_sort():
    """Rows whose nucleus fits in 64 candidates, in 1024, and neither (the full sort): the
    threshold is the one a full sort gives, and the kept set the oracle's."""
    from rgpo_fast.ops import truncation

    g = torch.Generator().manual_seed(7)
    scales = torch.tensor([8.0] * 4 + [3.0] * 4 + [0.3] * 4)[:, None]  # peaked .. flat
    z = scales * torch.randn(12, 3000, generator=g)
    thr = row_thresholds(z, 0.9, 0)
    kept = (z >= thr[:, None]).sum(-1)
    assert kept[:4].max() < 64 and 64 <= kept[4:8].min() and kept[4:8].max() < 1024
    assert kept[8:].min() >= 1024  # each tier is exercised
    full = truncation._boundary(z.sort(-1, descending=True).values,
                                truncation._nucleus_count(z.sort(-1, descending=True).values,
                                                          torch.logsumexp(z, -1), 0.9), 3000)
    assert torch.equal(thr, full)
    support = sampler_support(z, z.argmax(-1), 0.9, 0)
    assert torch.equal(z >= thr[:, None], support)


def test_dropped_logits_get_exactly_zero_gradient(backend):
    """A vocabulary entry that no row's sampler keeps (and no row targets) gets a weight
    gradient of exactly 0 on every backend, not a tiny floor: a denormal there would slow
    the gradient matmuls down by orders of magnitude on CPUs."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(24, 16, generator=g)
    w = (2.0 * torch.randn(300, 16, generator=g)).requires_grad_()
    with torch.no_grad():
        z = h @ w.T
    t = z.argmax(-1)  # targets inside every row's top-5
    logp, ent = fused_linear_logprobs(h, w, t, top_k=5, impl=backend, return_entropy=True)
    (logp.sum() + 0.1 * ent.sum()).backward()
    kept = (z >= torch.topk(z, 5, dim=-1).values[:, -1:]).any(0)
    assert 5 <= int(kept.sum()) < 300
    assert bool((w.grad[~kept] == 0).all()) and bool((w.grad[kept].abs().sum(-1) > 0).all())
