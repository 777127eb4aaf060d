"""Several updates per rollout batch (trainer/rl_update.py): mini-batches of whole prompts,
old log-probs before the first update, clip statistics and policy drift."""

import copy

import pytest
import torch

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.trainer.config import ConfigError, TrainConfig
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.rl_update import mini_batch_rows, rl_update
from rgpo_fast.trainer.testing import tiny_model_dir, tiny_policy
from rgpo_fast.trainer.update import backward_batch, make_optimizer, optimizer_step


def test_mini_batches_hold_whole_prompts_and_do_not_depend_on_the_world_size():
    P, G, n = 12, 3, 4
    prompt = torch.arange(P).repeat_interleave(G)  # (36,) global prompt of each row
    parts = mini_batch_rows(prompt, P, n)
    assert sorted(i for p in parts for i in p) == list(range(P * G))
    assert [len(p) for p in parts] == [9, 9, 9, 9]
    for p in parts:  # a prompt's rows are all in one mini-batch
        assert all((prompt == j).nonzero().flatten().tolist() == sorted(
            i for i in p if prompt[i] == j) for j in set(prompt[p].tolist()))
    global_sets = [set(prompt[p].tolist()) for p in parts]
    for W in (2, 3, 4):  # rank r holds prompts r, r + W, ... (the trainer's strided draw)
        union = [set() for _ in range(n)]
        for r in range(W):
            mine = prompt[torch.isin(prompt, torch.arange(r, P, W))]
            for k, p in enumerate(mini_batch_rows(mine, P, n)):
                # contiguous runs: a mini-batch of >= W prompts has rows on every rank
                assert p or P // n < W, f"rank {r} of {W} has no rows in mini-batch {k}"
                union[k] |= set(mine[p].tolist())
        assert union == global_sets
    # refill prompts (index >= P) wrap around
    assert mini_batch_rows(torch.tensor([0, P, 2 * P - 1]), P, 2) == [[0, 1], [2]]


def test_mini_batch_count_is_checked():
    with pytest.raises(ValueError, match="whole prompts"):
        mini_batch_rows(torch.arange(4), 4, 5)
    with pytest.raises(ConfigError, match="mini_batches=5 must be <= train.prompts_per_step=4"):
        TrainConfig(prompts_per_step=4, mini_batches=5)
    with pytest.raises(ConfigError, match="ppo_epochs=0 must be positive"):
        TrainConfig(ppo_epochs=0)


def _policy(tmp_path):
    return tiny_policy(tiny_model_dir(tmp_path / "cache", layers=2))


def _batch(vocab: int, algo):
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(12):  # 4 prompts x 3 samples, rewards mixed within each prompt
        ids = torch.randint(3, vocab, (14,), generator=g).tolist()
        rows.append(Sample(prompt_ids=ids[:6], response_ids=ids[6:], group=i // 3,
                           reward=float(i % 3 == 0)))
    return assemble_batch(rows, algo, pad_token_id=0)


def test_one_update_is_the_plain_step(tmp_path):
    """epochs = mini_batches = 1: exactly backward_batch + optimizer_step (ratio 1)."""
    algo = get_preset("grpo")
    a = _policy(tmp_path)
    b = copy.deepcopy(a)
    batch = _batch(a.lm.config.vocab_size, algo)
    opt_a, opt_b = make_optimizer(a, 1e-2, algo_optim()), make_optimizer(b, 1e-2, algo_optim())
    m = rl_update(a, opt_a, batch, algo.loss_config(), micro=4, info=DistInfo(), grad_clip=1.0)
    ref = backward_batch(b, batch, algo.loss_config(), 4, DistInfo())
    optimizer_step(b, opt_b, None, 1.0)
    assert batch.old_logprobs is None  # not needed: the loss's own detached log-probs
    assert m["ppo/updates"] == 1 and "ppo/approx_kl" not in m
    assert abs(m["loss/total"] - ref["loss/total"]) < 1e-9
    assert m["ratio/mean"] == pytest.approx(1.0, abs=1e-6) and m["clip_frac/low"] == 0
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)


def algo_optim():
    from rgpo_fast.trainer.config import OptimConfig

    return OptimConfig()


def test_epochs_at_a_large_lr_clip_and_drift(tmp_path):
    algo = get_preset("grpo")
    policy = _policy(tmp_path)
    before = {k: p.detach().clone() for k, p in policy.named_parameters()}
    batch = _batch(policy.lm.config.vocab_size, algo)
    opt = make_optimizer(policy, 5e-2, algo_optim())
    m = rl_update(policy, opt, batch, algo.loss_config(), micro=4, info=DistInfo(),
                  grad_clip=0.0, epochs=3, mini_batches=2, num_prompts=4, seed=1)
    assert batch.old_logprobs is not None  # computed once, before the first update
    assert m["ppo/updates"] == 6
    assert all(s["step"] == 6 for s in opt.state.values())  # six optimizer steps
    # later updates see the moved policy: the ratio leaves 1 and the clip acts
    assert m["clip_frac/low"] + m["clip_frac/high"] > 0
    assert m["ratio/mean"] != pytest.approx(1.0, abs=1e-4)
    assert m["ppo/approx_kl"] > 1e-4 and m["ppo/ratio_max"] > 1.2
    assert m["tokens/policy"] == float(batch.response_mask.sum())  # one pass's tokens
    assert any(not torch.equal(p, before[k]) for k, p in policy.named_parameters())


def test_mini_batches_are_the_updates_on_their_rows(tmp_path):
    """Two mini-batches, one pass: the same as two plain steps on the rows of each, taken
    in the order the seed draws, with old log-probs from before the first."""
    algo = get_preset("grpo")
    a = _policy(tmp_path)
    b = copy.deepcopy(a)
    batch = _batch(a.lm.config.vocab_size, algo)
    opt_a, opt_b = make_optimizer(a, 1e-2, algo_optim()), make_optimizer(b, 1e-2, algo_optim())
    rl_update(a, opt_a, batch, algo.loss_config(), micro=4, info=DistInfo(), grad_clip=1.0,
              mini_batches=2, num_prompts=4, seed=5)
    parts = mini_batch_rows(batch.group_ids, 4, 2)
    order = torch.randperm(2, generator=torch.Generator().manual_seed(5)).tolist()
    for k in order:  # batch.old_logprobs was set by rl_update before its first update
        backward_batch(b, batch.select(parts[k]), algo.loss_config(), 4, DistInfo())
        optimizer_step(b, opt_b, None, 1.0)
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=k)


def test_entropy_is_logged_and_its_bonus_raises_it(tmp_path):
    """entropy/mean is logged on every update; with zero advantages (equal rewards) the
    entropy bonus alone moves the policy, towards higher entropy."""
    start = _policy(tmp_path)
    vocab = start.lm.config.vocab_size
    g = torch.Generator().manual_seed(4)
    rows = [Sample(prompt_ids=torch.randint(3, vocab, (6,), generator=g).tolist(),
                   response_ids=torch.randint(3, vocab, (8,), generator=g).tolist(),
                   group=i // 3, reward=1.0) for i in range(6)]
    entropy = {}
    for coef in (0.0, 0.5):
        algo = get_preset("grpo", entropy_coef=coef)
        policy = copy.deepcopy(start)
        batch = assemble_batch(rows, algo, pad_token_id=0)
        opt = make_optimizer(policy, 2e-2, algo_optim())
        first = rl_update(policy, opt, batch, algo.loss_config(), micro=4, info=DistInfo(),
                          grad_clip=0.0)
        for _ in range(5):
            last = rl_update(policy, opt, batch, algo.loss_config(), micro=4, info=DistInfo(),
                             grad_clip=0.0)
        assert first["entropy/mean"] > 0
        entropy[coef] = (first["entropy/mean"], last["entropy/mean"])
    assert entropy[0.0][0] == pytest.approx(entropy[0.5][0])  # the same start
    assert entropy[0.0][1] == pytest.approx(entropy[0.0][0], rel=1e-5)  # nothing to learn
    assert entropy[0.5][1] > entropy[0.5][0] + 1e-3  # the bonus alone raised it


def test_token_mask_leaves_the_global_counts_and_is_logged(tmp_path):
    """rollout_correction=token_mask: micro-batched with the trainer's global counts, the
    loss equals one fused call over the whole batch (whose counts exclude the masked
    tokens), and the masked share is reported."""
    from rgpo_fast.trainer.update import policy_logprobs

    algo = get_preset("grpo", rollout_correction="token_mask", token_mask_low=0.9,
                      token_mask_high=1.1)
    policy = _policy(tmp_path)
    batch = _batch(policy.lm.config.vocab_size, algo)
    old = policy_logprobs(policy, batch, 4, DistInfo())
    g = torch.Generator().manual_seed(5)
    batch.rollout_logprobs = old + 0.15 * torch.randn(old.shape, generator=g)
    batch.has_rollout_logprobs = torch.ones(batch.batch_size, dtype=torch.bool)
    batch.set_old_logprobs(old)
    cfg = algo.loss_config()
    m = backward_batch(policy, batch, cfg, 4, DistInfo())
    with torch.no_grad():
        whole, metrics = policy(batch.input_ids, batch.attention_mask, batch.position_ids,
                                mode="loss", loss_inputs={"config": cfg, **batch.loss_inputs()})
    rho = torch.exp(batch.old_logprobs - batch.rollout_logprobs)[batch.response_mask]
    n_masked = int(((rho < 0.9) | (rho > 1.1)).sum())
    assert 0 < n_masked < rho.numel()
    assert m["tokens/masked"] == n_masked == float(metrics["tokens/masked"])
    assert m["tokens/policy"] == rho.numel() - n_masked
    assert m["loss/total"] == pytest.approx(float(whole), rel=1e-5)
    out = rl_update(policy, make_optimizer(policy, 1e-3, algo_optim()), batch, cfg, micro=4,
                    info=DistInfo(), grad_clip=1.0)
    assert out["rollout/masked_frac"] == pytest.approx(n_masked / rho.numel())
