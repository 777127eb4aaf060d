"""Micro-batching of a step: grouping by length, and gradients independent of the split."""

import pytest
import torch

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.testing import tiny_model_dir, tiny_policy
from rgpo_fast.trainer.update import backward_batch, micro_batches, policy_logprobs


def test_micro_batches_partition_rows_by_length():
    lengths = [9, 3, 7, 3, 12, 5, 1]
    chunks = micro_batches(lengths, 3)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    assert [len(c) for c in chunks] == [3, 3, 1]
    # every row of a micro-batch is no longer than any row of the next one
    for a, b in zip(chunks, chunks[1:]):
        assert max(lengths[i] for i in a) <= min(lengths[i] for i in b)
    assert chunks[0] == [6, 1, 3]  # ties keep their order (stable)
    assert micro_batches([], 4) == []


def test_micro_batches_rejects_bad_size():
    with pytest.raises(ValueError, match="micro-batch size"):
        micro_batches([1, 2], 0)


def _samples(vocab: int) -> list[Sample]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(9):  # lengths from 5 to ~40 tokens, in no particular order
        p = int(torch.randint(3, 20, (1,), generator=g))
        n = int(torch.randint(2, 20, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + n,), generator=g).tolist()
        rows.append(Sample(prompt_ids=ids[:p], response_ids=ids[p:], group=i // 3,
                           kind="transferred" if i == 4 else "unguided",
                           reward=float(i % 2), hint_mask=[j < 2 for j in range(n)] if i == 7
                           else None))
    return rows


def test_step_gradients_do_not_depend_on_micro_batching(tmp_path):
    policy = tiny_policy(tiny_model_dir(tmp_path / "cache", layers=2))
    algo = get_preset("rgpo", sft_coef=0.5)
    batch = assemble_batch(_samples(policy.lm.config.vocab_size), algo, pad_token_id=0)
    results = {}
    for micro in (64, 2):
        policy.zero_grad(set_to_none=True)
        m = backward_batch(policy, batch, algo.loss_config(), micro, DistInfo())
        grads = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}
        old = policy_logprobs(policy, batch, micro, DistInfo())
        results[micro] = (m["loss/total"], grads, old)
    (l1, g1, lp1), (l2, g2, lp2) = results[64], results[2]
    assert abs(l1 - l2) < 1e-6
    assert len(g1) == len(g2) > 0
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], atol=1e-6, rtol=1e-5, msg=k)
    # log-probs land in their own rows whatever the grouping (padding positions are 0)
    torch.testing.assert_close(lp2 * batch.response_mask, lp1 * batch.response_mask,
                               atol=1e-5, rtol=1e-5)
    assert lp1.abs().sum() > 0
