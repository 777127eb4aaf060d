"""trainer/policy.py: the padding-free (packed) forward equals the padded one (loss and
gradients) and passes its sequence boundaries to attention; activation checkpointing
gives the same gradients."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rgpo_fast.trainer.build import resolve_packing
from rgpo_fast.trainer.policy import PolicyModule, enable_gradient_checkpointing


def _policy(packed: bool, attn: str = "sdpa") -> PolicyModule:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    cfg._attn_implementation = attn
    return PolicyModule(Qwen2ForCausalLM(cfg), impl="torch", packed=packed)


def varlen_reference(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     **kwargs):
    """What flash-attn's varlen kernel computes, in plain PyTorch: causal attention inside
    each sequence of the packed row, with the sequences taken ONLY from `cu_seq_lens_q`
    (the mask and the position ids are ignored, as flash-attn ignores them). sdpa instead
    derives the sequences from the restarting position ids, so a test with sdpa cannot see
    wrong boundaries."""
    cu = kwargs["cu_seq_lens_q"].tolist()
    assert query.shape[0] == 1, "a packed forward has one row"
    rep = query.shape[1] // key.shape[1]  # grouped-query attention
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    out = torch.zeros_like(query)
    for s, e in zip(cu[:-1], cu[1:]):
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


@pytest.fixture
def varlen_attention(monkeypatch):
    """`varlen_reference` registered as an attention implementation for this test."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "varlen_reference",
                        varlen_reference)  # fmt: skip
    return "varlen_reference"


def _packed_vs_padded(packed_attn: str):
    g = torch.Generator().manual_seed(1)
    B, L = 4, 9
    ids = torch.randint(0, 40, (B, L), generator=g)
    attn = torch.ones(B, L, dtype=torch.long)
    attn[1, 6:] = 0  # right padding of different lengths
    attn[3, 4:] = 0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    mask = attn[:, 1:].bool() & (torch.arange(L - 1) >= 2)  # response tokens
    kw = {"targets": ids[:, 1:], "mask": mask, "advantages": torch.randn(B, generator=g)}
    results = []
    for packed, impl in ((False, "sdpa"), (True, packed_attn)):
        policy = _policy(packed, impl)
        loss, _ = policy(ids, attn, pos, mode="loss", loss_inputs=kw)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
        logp = policy(ids, attn, pos, mode="logprobs")
        results.append((loss.detach(), grads, logp.detach()))
    return attn, results


@pytest.mark.parametrize("packed_attn", ["sdpa", "varlen"])
def test_packed_forward_matches_padded_loss_and_grads(packed_attn, varlen_attention):
    """The padded forward (sdpa) against the packed one, through sdpa (boundaries from the
    restarting position ids) and through a varlen attention that sees nothing but the
    boundaries the policy computes (`cu_seq_lens`, what flash-attn uses)."""
    impl = varlen_attention if packed_attn == "varlen" else "sdpa"
    attn, ((l0, g0, lp0), (l1, g1, lp1)) = _packed_vs_padded(impl)
    assert torch.allclose(l0, l1, atol=1e-6)
    keep = attn[:, 1:].bool()
    assert torch.allclose(lp0[keep], lp1[keep], atol=1e-5)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), name


def test_wrong_boundaries_are_seen_by_the_varlen_check(varlen_attention, monkeypatch):
    """The varlen comparison above fails when the boundaries are wrong (here: the last two
    sequences merged), where the sdpa one would not notice."""
    from rgpo_fast.trainer import policy as policy_mod

    real = policy_mod.varlen_kwargs

    def merged(attention_mask):
        kw = real(attention_mask)
        cu = kw["cu_seq_lens_q"]
        kw["cu_seq_lens_q"] = kw["cu_seq_lens_k"] = torch.cat([cu[:-2], cu[-1:]])
        return kw

    monkeypatch.setattr(policy_mod, "varlen_kwargs", merged)
    _, ((_, _, lp0), (_, _, lp1)) = _packed_vs_padded(varlen_attention)
    assert not torch.allclose(lp0[3, :3], lp1[3, :3], atol=1e-3)


@pytest.mark.parametrize(
    "setting, attn, expect",
    [("auto", "flash_attention_2", True), ("auto", "sdpa", False), ("on", "sdpa", True),
     ("off", "flash_attention_2", False)],
)
def test_packing_resolution(setting, attn, expect):
    assert resolve_packing(setting, attn) is expect


def test_packed_forward_passes_sequence_boundaries_to_attention(monkeypatch):
    """Every layer's attention receives the varlen boundaries computed once from the mask,
    so flash-attn never re-derives them from position ids (a host sync per layer)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    seen = []

    def recording(module, q, k, v, mask, **kw):
        seen.append({k_: kw.get(k_) for k_ in ("cu_seq_lens_q", "cu_seq_lens_k",
                                                "max_length_q", "max_length_k")})  # fmt: skip
        return sdpa(module, q, k, v, mask, **kw)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording)
    attn = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])
    ids = torch.randint(0, 40, attn.shape)
    _policy(packed=True)(ids, attn, None, mode="logprobs")
    assert len(seen) == 2  # both layers
    for kw in seen:
        assert kw["cu_seq_lens_q"].tolist() == [0, 9, 15, 19]
        assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"]
        assert kw["max_length_q"] == kw["max_length_k"] == 9
        assert isinstance(kw["max_length_q"], int)


def test_activation_checkpointing_keeps_gradients(recwarn):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (3, 8), generator=g)
    attn = torch.ones_like(ids)
    kw = {"targets": ids[:, 1:], "mask": torch.ones(3, 7, dtype=torch.bool),
          "advantages": torch.tensor([1.0, -0.5, 0.2])}
    grads = []
    for checkpointed in (False, True):
        policy = _policy(packed=False)
        if checkpointed:
            enable_gradient_checkpointing(policy.lm)
        policy.train()
        loss, _ = policy(ids, attn, None, mode="loss", loss_inputs=kw)
        loss.backward()
        grads.append({n: p.grad for n, p in policy.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
    assert not [w for w in recwarn if "deprecated" in str(w.message)]
