"""`is` transfer: hinted-context log-probs recomputed by the trainer when they are missing."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.policy import PolicyModule
from rgpo_fast.trainer.update import fill_rollout_logprobs


def _policy() -> PolicyModule:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return PolicyModule(Qwen2ForCausalLM(cfg).eval(), impl="torch")


def _reference(policy, prompt, response):
    """log p(response | prompt) from full logits of one unpadded sequence."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = policy.lm(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return logp[pos, torch.tensor(response)]


def test_fills_only_missing_logprobs_with_the_hinted_context():
    policy = _policy()
    hinted = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [2, 2, 2, 2]]
    responses = [[10, 11, 12], [13, 14, 15, 16, 17], [18]]
    rolls = [
        Sample(prompt_ids=[1, 2], response_ids=y, kind="transferred", reward=1.0, group=0,
               rollout_prompt_ids=h)
        for h, y in zip(hinted, responses)
    ]
    kept = Sample(prompt_ids=[1, 2], response_ids=[3], rollout_logprobs=[-0.5],
                  kind="transferred", reward=1.0, group=0, rollout_prompt_ids=[1])
    plain = Sample(prompt_ids=[1, 2], response_ids=[3, 4], kind="unguided", reward=0.0, group=0)
    filled = fill_rollout_logprobs(policy, rolls + [kept, plain], 0, micro=2, info=DistInfo())
    assert filled == 3
    for r, h, y in zip(rolls, hinted, responses):
        assert len(r.rollout_logprobs) == len(y)
        assert torch.allclose(torch.tensor(r.rollout_logprobs), _reference(policy, h, y), atol=1e-5)
    assert kept.rollout_logprobs == [-0.5] and plain.rollout_logprobs is None


def test_filled_samples_assemble_into_an_is_batch():
    policy = _policy()
    unguided = [Sample(prompt_ids=[1, 2], response_ids=[3, 4], kind="unguided", reward=0.0,
                       group=0) for _ in range(2)]
    moved = Sample(prompt_ids=[1, 2], response_ids=[5, 6, 7], kind="transferred", reward=1.0,
                   group=0, rollout_prompt_ids=[1, 2, 9, 9])
    fill_rollout_logprobs(policy, unguided + [moved], 0, micro=4, info=DistInfo())
    batch = assemble_batch(unguided + [moved], get_preset("guide"), pad_token_id=0)
    assert batch.rollout_logprobs is not None
    assert batch.advantages[-1].item() == 1.0  # r - mean(unguided rewards)
