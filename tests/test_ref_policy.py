"""The KL term to a frozen reference policy (`algo.beta` > 0): it happens, it pulls the
policy towards the reference, it survives a resume, and beta > 0 without a reference is
an error rather than a silently skipped term."""

import copy
import json

import pytest
import torch

from rgpo_fast import functional as F
from rgpo_fast import oracle as R
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.train import main
from rgpo_fast.trainer.config import OptimConfig
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.ref_policy import REF_FILE, copy_weights, load_ref_policy, save_ref_policy
from rgpo_fast.trainer.rl_update import rl_update
from rgpo_fast.trainer.testing import tiny_args, tiny_model_dir, tiny_policy
from rgpo_fast.trainer.update import make_optimizer, policy_logprobs


def test_beta_without_reference_logprobs_is_an_error():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(2, 3, 8, generator=g), torch.randn(11, 8, generator=g)
    t, m, a = torch.randint(0, 11, (2, 3), generator=g), torch.ones(2, 3, dtype=torch.bool), \
        torch.tensor([1.0, -1.0])
    for fn in (F.fused_linear_policy_loss, R.naive_policy_loss):
        with pytest.raises(ValueError, match="beta=0.1 > 0 needs ref_logprobs"):
            fn(h, w, t, m, a, beta=0.1)
        fn(h, w, t, m, a, beta=0.1, ref_logprobs=torch.zeros(2, 3))  # with them: fine


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("cache"))


_policy = tiny_policy


def _kl(policy, ref, batch) -> float:
    """Mean k3 estimate of KL(policy || ref) over the response tokens."""
    lp = policy_logprobs(policy, batch, 8, DistInfo())
    d = (policy_logprobs(ref, batch, 8, DistInfo()) - lp)[batch.response_mask]
    return float((torch.expm1(d) - d).mean())


def test_kl_term_pulls_the_policy_towards_the_reference(model_dir):
    ref = _policy(model_dir).requires_grad_(False)
    start = _policy(model_dir)
    with torch.no_grad():  # a policy that has drifted from the reference
        g = torch.Generator().manual_seed(0)
        for p in start.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    g = torch.Generator().manual_seed(1)
    vocab = start.lm.config.vocab_size
    rows = [Sample(prompt_ids=torch.randint(3, vocab, (5,), generator=g).tolist(),
                   response_ids=torch.randint(3, vocab, (7,), generator=g).tolist(),
                   group=i // 4, reward=1.0) for i in range(8)]  # equal rewards: advantage 0
    kl = {}
    for beta in (0.0, 0.5):
        algo = get_preset("grpo", beta=beta)
        policy = copy.deepcopy(start)
        batch = assemble_batch(rows, algo, pad_token_id=0)
        batch.ref_logprobs = policy_logprobs(ref, batch, 8, DistInfo())
        kl["before"] = _kl(policy, ref, batch)
        opt = make_optimizer(policy, 1e-2, OptimConfig(weight_decay=0.0))
        m = rl_update(policy, opt, batch, algo.loss_config(), micro=8, info=DistInfo(),
                      grad_clip=0.0, epochs=10)
        kl[beta] = _kl(policy, ref, batch)
        if beta:  # the logged KL is the loss's own estimate on the first update's tokens
            assert m["kl/mean"] > 0 and m["loss/kl"] > 0
    assert kl["before"] > 0.05
    assert kl[0.0] == pytest.approx(kl["before"], rel=1e-6)  # no advantage, no KL: no move
    assert kl[0.5] < 0.5 * kl["before"]  # the KL term alone moved it towards the reference


def test_reference_weights_copy_save_and_load(model_dir, tmp_path):
    policy, ref = _policy(model_dir), _policy(model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    copy_weights(ref, policy)
    for p, r in zip(policy.parameters(), ref.parameters()):
        assert torch.equal(p, r)
    save_ref_policy(ref, tmp_path, DistInfo())
    fresh = _policy(model_dir)
    load_ref_policy(fresh, tmp_path)
    for p, r in zip(policy.parameters(), fresh.parameters()):
        assert torch.equal(p, r)


def test_run_with_beta_logs_kl_and_resumes_against_the_same_reference(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    # LUFFY: the reference solution in a group slot gives advantages != 0 even while the
    # tiny model solves nothing, so the policy leaves the reference from step 1
    extra = ["--algo", "luffy", "--algo.beta", "0.1", "--train.ppo_epochs", "2",
             "--logging.plots", "false", "--eval.pass_k", "0", "--train.save_every", "1"]
    assert main(tiny_args(out, cache, steps=2, extra=extra)) == 0
    ref_file = out / "checkpoints" / REF_FILE
    assert ref_file.is_file()
    saved = torch.load(ref_file, weights_only=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("kl/mean" in r and "loss/kl" in r for r in rows)
    assert rows[-1]["kl/mean"] > 0  # the policy has left the reference
    assert main(tiny_args(out, cache, steps=3, extra=extra + ["--resume"])) == 0
    for k, v in torch.load(ref_file, weights_only=True).items():
        assert torch.equal(v, saved[k]), k  # resumed against the reference, not re-made
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["kl/mean"] > 0
    ref_file.unlink()
    assert main(tiny_args(out, cache, steps=4, extra=extra + ["--resume"])) == 2
