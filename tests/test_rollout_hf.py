"""hf rollout engine: sampling maths, stops, seeds, engine log-probs vs a full forward."""

import copy

import pytest
import torch

from rgpo_fast.rollout.base import RolloutEngine, SamplingParams
from rgpo_fast.rollout.hf import HFEngine, sample_next, top_p_filter
from rgpo_fast.trainer.tiny_model import TinyModelSpec, ensure_tiny_model, load_model_and_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = TinyModelSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)
    model, tok = load_model_and_tokenizer(ensure_tiny_model(spec, tmp_path_factory.mktemp("c")))
    return model, tok


def test_top_p_filter_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = top_p_filter(logits, 0.7)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()
    assert torch.isfinite(top_p_filter(logits, 0.01)[0, 0])  # top token always survives
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_sample_next_greedy_and_logprob():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    ids, lp = sample_next(logits, 0.0, 1.0, None)
    assert ids.item() == 1
    assert lp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())
    ids, lp = sample_next(logits, 0.5, 1.0, torch.Generator().manual_seed(0))
    assert lp.item() == pytest.approx(torch.log_softmax(logits / 0.5, -1)[0, ids.item()].item())


def _prompts(tok, n=3):
    return [tok(f"<|im_start|>user\n{i}+{i}=?<|im_end|>\n<|im_start|>assistant\n"[: 30 + i],
                add_special_tokens=False)["input_ids"] for i in range(n)]  # ragged lengths


def test_generate_shapes_seeds_and_logprobs(tiny):
    model, tok = tiny
    eng = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                   max_batch_size=4)  # 3 prompts x 2 samples -> two decode batches
    assert isinstance(eng, RolloutEngine)
    prompts = _prompts(tok)
    p = SamplingParams(n=2, max_new_tokens=10, temperature=1.0, seed=123)
    a, b = eng.generate(prompts, p), eng.generate(prompts, p)
    assert [o.prompt_ids for o in a] == prompts
    assert all(len(o.completions) == 2 for o in a)
    assert [[c.token_ids for c in o.completions] for o in a] == \
        [[c.token_ids for c in o.completions] for o in b]  # same seed, same samples
    c0 = a[1].completions[0]
    ids = torch.tensor([prompts[1] + c0.token_ids])
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits[0].float(), -1)
    start = len(prompts[1]) - 1
    ref_lp = ref[start:start + len(c0.token_ids)].gather(-1, torch.tensor(c0.token_ids)[:, None])
    torch.testing.assert_close(torch.tensor(c0.logprobs), ref_lp.squeeze(-1), atol=1e-4, rtol=0)


def test_eos_and_length_stops(tiny):
    model, tok = tiny
    eng = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    # Make EOS overwhelmingly likely: every sample stops after one token with reason "stop".
    with torch.no_grad():
        bias = torch.zeros(model.config.vocab_size)
        bias[tok.eos_token_id] = 100.0
        head = model.get_output_embeddings()
        head.bias = torch.nn.Parameter(bias)
    try:
        out = eng.generate(_prompts(tok, 2), SamplingParams(n=2, max_new_tokens=8, seed=0))
        for o in out:
            for c in o.completions:
                assert c.token_ids == [tok.eos_token_id] and c.finish_reason == "stop"
    finally:
        head.bias = None
    out = eng.generate(_prompts(tok, 1), SamplingParams(n=1, max_new_tokens=3, temperature=0))
    c = out[0].completions[0]
    if c.finish_reason == "length":
        assert len(c.token_ids) == 3
    else:
        assert c.token_ids[-1] == tok.eos_token_id and len(c.token_ids) <= 3


def test_sleep_protocol_and_load_weights(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]  # the test overwrites a weight
    eng = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    eng.sleep(level=2)
    with pytest.raises(RuntimeError, match="asleep"):
        eng.generate(_prompts(tok, 1), SamplingParams(max_new_tokens=2))
    eng.wake_up(["weights"])
    name, p = next(iter(model.named_parameters()))
    eng.load_weights([(name, torch.zeros_like(p))])
    assert float(p.detach().abs().sum()) == 0.0 and eng.loads == 1
    with pytest.raises(KeyError, match="no parameter"):
        eng.load_weights([("nope.weight", torch.zeros(1))])
    eng.wake_up(["kv_cache"])
