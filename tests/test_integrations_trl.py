"""TRL adapter: on the same batch, the fused loss and its gradients equal TRL's own
`GRPOTrainer._compute_loss`; a few `train()` steps run through the fused path; RGPO
guidance adds accepted guided completions as SFT rows that enter the loss with sft_coef."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from rgpo_fast.algos.presets import get_preset  # noqa: E402
from rgpo_fast.integrations.trl import (  # noqa: E402
    SFT_MASK_KEY,
    RGPOFusedGRPOTrainer,
    append_sft_rows,
    split_rows,
    trl_loss_options,
)
from rgpo_fast.trainer.tiny_model import (  # noqa: E402
    TinyModelSpec,
    ensure_tiny_model,
    load_model_and_tokenizer,
)

G = 4  # group size
C = 6  # max completion length


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    spec = TinyModelSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, seed=3)  # fmt: skip
    return ensure_tiny_model(spec, tmp_path_factory.mktemp("tiny"))


def _dataset(n=4, rationale=True):
    rows = {"prompt": [[{"role": "user", "content": f"{i}+{i}=?"}] for i in range(n)],
            "answer": [str(2 * i) for i in range(n)]}  # fmt: skip
    if rationale:
        rows["rationale"] = [f"{i}+{i}={2 * i}\nAnswer: {2 * i}" for i in range(n)]
    return datasets.Dataset.from_dict(rows)


def _zero_reward(completions, **kw):
    return [0.0] * len(completions)


def _make_trainer(model_dir, tmp_path, reward=_zero_reward, **kw):
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(model_dir)
    cfg_kw = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                  num_generations=G, max_completion_length=C, max_steps=2, learning_rate=1e-2,
                  logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                  seed=0, dataloader_num_workers=0, pad_to_multiple_of=None,
                  bf16=False)  # fmt: skip  (TRL defaults to bf16 autocast, even on CPU)
    cfg_kw.update(kw.pop("config", {}))
    args = trl.GRPOConfig(**cfg_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RGPOFusedGRPOTrainer(model=model, reward_funcs=reward, args=args,
                                       train_dataset=_dataset(), processing_class=tok,
                                       impl="torch", **kw)  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()  # as inside train(): "train" metrics and normalisers
    return trainer


def _batch(trainer, B=8, P=5, seed=1, old_noise=0.3):
    """A TRL-shaped batch: left-padded prompts, right-padded completions of mixed lengths."""
    g = torch.Generator().manual_seed(seed)
    V = trainer.model.config.vocab_size
    pl = torch.randint(2, P + 1, (B,), generator=g)
    cl = torch.randint(1, C + 1, (B,), generator=g)
    cl[0] = C
    prompt_ids = torch.randint(4, V, (B, P), generator=g)
    prompt_mask = (torch.arange(P)[None] >= (P - pl)[:, None]).long()
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 0)
    completion_ids = torch.randint(4, V, (B, C), generator=g)
    completion_mask = (torch.arange(C)[None] < cl[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, 0)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
              "completion_ids": completion_ids, "completion_mask": completion_mask,
              "advantages": torch.randn(B, generator=g),
              "num_items_in_batch": completion_mask.sum()}  # fmt: skip
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1), C)
    # Old / reference log-probs away from the current ones, so clipping and KL are active.
    inputs["old_per_token_logps"] = logps + old_noise * torch.randn(B, C, generator=g)
    inputs["ref_per_token_logps"] = logps + 0.2 * torch.randn(B, C, generator=g)
    return inputs


def _loss_and_grads(fn, trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = fn(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
             if p.grad is not None}  # fmt: skip
    trainer.model.zero_grad(set_to_none=True)
    return loss.detach(), grads


CASES = [
    ("grpo", {}),
    ("bnpo", {}),
    ("dr_grpo", {}),
    ("dapo", {}),
    # TRL 1.16 defaults to use_bias_correction_kl=True (KL weighted by the ratio), which the
    # fused loss does not implement (it falls back, see test_unsupported...): plain k3 here.
    ("dapo", {"epsilon_high": 0.28, "beta": 0.04, "use_bias_correction_kl": False}),
    ("grpo", {"delta": 1.5, "beta": 0.1, "use_bias_correction_kl": False}),
    ("bnpo", {"old": False}),
    # CISPO: the detached weight capped at epsilon_high (ScaleRL's 5.0; 1.2 here so the cap acts)
    ("cispo", {"epsilon_high": 1.2}),
    # GSPO: the sequence-level ratio (the paper's clip range is tiny: 3e-4 / 4e-4)
    ("grpo", {"importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4}),
    ("dapo", {"importance_sampling_level": "sequence", "epsilon": 0.02, "epsilon_high": 0.03}),
    # SAPO: TRL's sigmoid gate at its default temperatures, and at steep ones (the gate far
    # from linear over the batch's ratios), with the KL term
    ("sapo", {}),
    ("sapo", {"sapo_temperature_pos": 3.0, "sapo_temperature_neg": 6.0, "beta": 0.05,
              "use_bias_correction_kl": False}),
]


@pytest.mark.parametrize("loss_type,opts", CASES,
                         ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_fused_loss_and_grads_equal_trl(model_dir, tmp_path, loss_type, opts):
    trainer = _make_trainer(model_dir, tmp_path, config={"loss_type": loss_type})
    opts = dict(opts)
    use_old = opts.pop("old", True)
    for k, v in opts.items():
        setattr(trainer.args, k, v)
    trainer.beta = trainer.args.beta
    trainer.epsilon_low = trainer.args.epsilon
    trainer.epsilon_high = trainer.args.epsilon_high or trainer.args.epsilon
    trainer.importance_sampling_level = trainer.args.importance_sampling_level
    inputs = _batch(trainer)
    if not use_old:
        del inputs["old_per_token_logps"]
    if trainer.beta == 0:
        del inputs["ref_per_token_logps"]
    ref_loss, ref_g = _loss_and_grads(
        lambda m, x: trl.GRPOTrainer._compute_loss(trainer, m, x), trainer, inputs)
    calls = trainer.rgpo_fused_calls
    loss, g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    assert trainer.rgpo_fused_calls == calls + 1  # the fused path ran, not a fallback
    assert torch.isfinite(loss) and abs(float(ref_loss)) > 1e-6
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), (float(loss), float(ref_loss))
    assert set(g) == set(ref_g)
    worst = max(((g[n] - ref_g[n]).abs().max() / (ref_g[n].abs().max() + 1e-8)).item() for n in g)
    assert worst < 1e-4, f"max relative gradient difference {worst:.3g}"
    # TRL's metric names are logged by the fused path
    assert "clip_ratio/region_mean" in trainer._metrics["train"]
    if use_old and loss_type == "sapo":  # a gate: nothing is clipped
        assert all(v == 0 for v in trainer._metrics["train"]["clip_ratio/region_mean"])
    elif use_old:
        assert any(v > 0 for v in trainer._metrics["train"]["clip_ratio/region_mean"])


def test_bf16_autocast_three_way(model_dir, tmp_path, monkeypatch):
    """Under TRL's default bf16 autocast both paths round; against the fp32 loss, ours may
    be at most twice as wrong as TRL's plus a slack (STYLE.md 7)."""
    trainer = _make_trainer(model_dir, tmp_path, config={"loss_type": "dapo", "bf16": True})
    inputs = _batch(trainer)
    trl_fn = lambda m, x: trl.GRPOTrainer._compute_loss(trainer, m, x)  # noqa: E731
    trl_loss, trl_g = _loss_and_grads(trl_fn, trainer, inputs)
    loss, g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    import contextlib

    monkeypatch.setattr(trainer.accelerator, "autocast", lambda *a, **k: contextlib.nullcontext())
    truth, truth_g = _loss_and_grads(trl_fn, trainer, inputs)
    err = abs(float(loss - truth)) / abs(float(truth))
    err_trl = abs(float(trl_loss - truth)) / abs(float(truth))
    assert err <= 2 * err_trl + 2e-3, (err, err_trl)
    for n in truth_g:
        scale = truth_g[n].abs().max() + 1e-8
        e = ((g[n] - truth_g[n]).abs().max() / scale).item()
        e_trl = ((trl_g[n] - truth_g[n]).abs().max() / scale).item()
        assert e <= 2 * e_trl + 2e-2, (n, e, e_trl)


def test_option_mapping():
    args = trl.GRPOConfig(output_dir="/tmp/unused", loss_type="dr_grpo", epsilon=0.2,
                          epsilon_high=0.28, delta=3.0, beta=0.01, temperature=0.7,
                          report_to="none", use_cpu=True)  # fmt: skip
    o = trl_loss_options(args)
    assert o == {"clip_low": 0.2, "clip_high": 0.28, "clip_ratio_c": 3.0, "beta": 0.01,
                 "kl_estimator": "k3", "loss_agg": "seq-mean-token-sum-norm",
                 "temperature": 0.7}  # fmt: skip
    cispo = trl_loss_options(trl.GRPOConfig(output_dir="/tmp/unused", loss_type="cispo",
                                            epsilon_high=5.0, delta=3.0, report_to="none",
                                            use_cpu=True))  # fmt: skip
    assert (cispo["objective"], cispo["clip_low"], cispo["clip_high"], cispo["clip_ratio_c"],
            cispo["loss_agg"]) == ("cispo", 1.0, 4.0, None, "token-mean")
    gspo = trl_loss_options(trl.GRPOConfig(output_dir="/tmp/unused", loss_type="grpo",
                                           importance_sampling_level="sequence",
                                           report_to="none", use_cpu=True))  # fmt: skip
    assert gspo["objective"] == "gspo" and gspo["loss_agg"] == "seq-mean-token-mean"
    sapo = trl_loss_options(trl.GRPOConfig(output_dir="/tmp/unused", loss_type="sapo",
                                           sapo_temperature_pos=0.5, sapo_temperature_neg=2.0,
                                           delta=3.0, report_to="none", use_cpu=True))
    assert (sapo["objective"], sapo["sapo_tau_pos"], sapo["sapo_tau_neg"],
            sapo["loss_agg"]) == ("sapo", 0.5, 2.0, "seq-mean-token-mean")
    assert not {"clip_low", "clip_high", "clip_ratio_c"} & set(sapo)  # delta is not read
    with pytest.raises(ValueError, match="cispo"):
        trl_loss_options(args, "cispo")


def test_unsupported_setting_falls_back_or_raises(model_dir, tmp_path):
    # LUSPO (a length-scaled sequence loss) has no fused equivalent
    trainer = _make_trainer(model_dir, tmp_path, config={"loss_type": "luspo"})
    inputs = _batch(trainer)
    with pytest.warns(UserWarning, match="loss_type='luspo'"):
        loss = trainer._compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss) and trainer.rgpo_fused_calls == 0
    with pytest.raises(ValueError, match="luspo"):
        _make_trainer(model_dir, tmp_path, config={"loss_type": "luspo"}, on_unsupported="error")


def test_train_steps_run_through_fused_loss(model_dir, tmp_path):
    trainer = _make_trainer(model_dir, tmp_path, reward=_random_reward)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.rgpo_fused_calls == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed > 0


def _random_reward(completions, **kw):
    return [float(len(c[0]["content"]) % 2) for c in completions]


# ----------------------------------------------------------------------------- guidance


class _FailUnguidedPassGuided:
    """Test reward: every unguided completion fails (first call of a step), every guided
    one succeeds (second call). Call order is TRL's: unguided scoring, then our guided."""

    __name__ = "fail_unguided_pass_guided"

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, **kw):
        self.calls += 1
        return [0.0 if self.calls % 2 == 1 else 1.0] * len(completions)


def test_guided_transfer_enters_loss_with_sft_mask(model_dir, tmp_path):
    algo = get_preset("rgpo", num_guided=2, sft_coef=0.5)
    trainer = _make_trainer(model_dir, tmp_path, reward=_FailUnguidedPassGuided(), guidance=algo)
    trainer.model.train()
    rows = [dict(r) for r in _dataset()][:2]
    gen_inputs = [r for r in rows for _ in range(G)]  # 2 prompts x G, as RepeatSampler gives
    batch = trainer._generate_and_score_completions(gen_inputs)
    B0 = 2 * G
    sft = batch[SFT_MASK_KEY]
    # 2 guided prompts x K=2 guided completions, all accepted (reward 1 > 0)
    assert sft.tolist() == [False] * B0 + [True] * 4
    assert trainer._metrics["train"]["guided/prompts"][-1] == 2.0
    assert trainer._metrics["train"]["guided/accepted"][-1] == 4.0
    assert torch.all(batch["advantages"][B0:] == 0)
    # transferred rows sit under the UNGUIDED prompt of their group (no hint text)
    pm = batch["prompt_mask"].bool()
    for j in range(4):
        g = j // 2
        assert batch["prompt_ids"][B0 + j][pm[B0 + j]].tolist() == \
            batch["prompt_ids"][g * G][pm[g * G]].tolist()
    assert int(batch["rgpo_num_sft_tokens"]) == int(batch["completion_mask"][B0:].sum())
    # hint levels: solved through an accepted guided response -> stays at 0
    assert trainer.rgpo_levels.levels == {}

    # The loss with the transferred rows minus the loss without them is exactly
    # sft_coef * mean NLL of the transferred tokens under the unguided prompt.
    def loss_of(b):
        return trainer._compute_loss(trainer.model, b).detach()

    keep = torch.arange(B0)
    drop = (SFT_MASK_KEY, "rgpo_num_sft_tokens")
    without = {k: (v[keep] if torch.is_tensor(v) and v.dim() > 0 else v)
               for k, v in batch.items() if k not in drop}
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)[B0:]
        att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)[B0:]
        Cw = batch["completion_ids"].shape[1]
        logits = trainer.model(input_ids=ids, attention_mask=att).logits[:, -Cw - 1 : -1]
        lp = torch.log_softmax(logits.float(), -1).gather(
            -1, batch["completion_ids"][B0:, :, None]).squeeze(-1)
        m = batch["completion_mask"][B0:].bool()
        nll = -(lp[m]).mean()
    diff = loss_of(batch) - loss_of(without)
    assert torch.allclose(diff, 0.5 * nll, rtol=1e-4, atol=1e-6), (float(diff), float(0.5 * nll))
    assert trainer._metrics["train"]["loss/sft"][-2] > 0


def test_guidance_failure_raises_hint_level(model_dir, tmp_path):
    algo = get_preset("rgpo", num_guided=1)
    trainer = _make_trainer(model_dir, tmp_path, reward=_zero_reward, guidance=algo)
    trainer.model.train()
    rows = [dict(r) for r in _dataset()][:1]
    batch = trainer._generate_and_score_completions([rows[0]] * G)
    assert not batch[SFT_MASK_KEY].any()  # nothing beat the unguided group
    assert list(trainer.rgpo_levels.levels.values()) == [1]


def test_guided_training_steps_run(model_dir, tmp_path):
    algo = get_preset("rgpo", num_guided=2)
    trainer = _make_trainer(model_dir, tmp_path, reward=_FailUnguidedPassGuided(), guidance=algo,
                            config={"gradient_accumulation_steps": 2, "max_steps": 1,
                                    "per_device_train_batch_size": 4})  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.rgpo_fused_calls == 2
    logged = trainer.state.log_history[0]
    assert logged["guided/prompts"] == 2 and logged["guided/accepted"] == 4
    assert logged["loss/sft"] > 0 and math.isfinite(logged["loss"])


def test_append_and_split_helpers():
    out = {"prompt_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
           "prompt_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
           "completion_ids": torch.tensor([[1, 2], [3, 0]]),
           "completion_mask": torch.tensor([[1, 1], [1, 0]]),
           "advantages": torch.tensor([0.5, -0.5]),
           "num_items_in_batch": torch.tensor(3)}  # fmt: skip
    res = append_sft_rows(out, [[5, 6, 7, 8]], [[4, 4, 4]], pad_id=0)
    assert res["prompt_ids"].tolist() == [[0, 0, 5, 6], [0, 7, 8, 9], [5, 6, 7, 8]]
    assert res["completion_ids"].tolist() == [[1, 2, 0], [3, 0, 0], [4, 4, 4]]
    assert res["completion_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert res["advantages"].tolist() == [0.5, -0.5, 0.0]
    assert res[SFT_MASK_KEY].tolist() == [False, False, True]
    parts = split_rows(res, 2)
    assert [len(p["prompt_ids"]) for p in parts] == [2, 1]
    assert parts[1][SFT_MASK_KEY].tolist() == [True] and int(parts[1]["num_items_in_batch"]) == 3


class _FailUnguidedThenAlternate:
    """The unguided call scores 0 everywhere; the next (GHPO's hinted round) 1, 0, 1, 0..."""

    __name__ = "fail_then_alternate"

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, **kw):
        self.calls += 1
        if self.calls == 1:
            return [0.0] * len(completions)
        return [float(i % 2 == 0) for i in range(len(completions))]


def test_ghpo_regroups_failed_groups_in_the_batch(model_dir, tmp_path):
    """GHPO in TRL: every group failed, so each is sampled again with the first omega-hint in
    the user message and replaces its rows: hinted prompts, new completions, advantages of
    the new rewards (TRL's group formula), the token count of the new completions."""
    from rgpo_fast.integrations.trl import group_advantages

    algo = get_preset("ghpo")
    trainer = _make_trainer(model_dir, tmp_path, reward=_FailUnguidedThenAlternate(),
                            guidance=algo)  # fmt: skip
    rows = [dict(r) for r in _dataset()][:2]
    batch = trainer._generate_and_score_completions([r for r in rows for _ in range(G)])
    assert batch["prompt_ids"].shape[0] == 2 * G and SFT_MASK_KEY in batch  # no rows added
    tok = trainer.processing_class
    pm = batch["prompt_mask"].bool()
    for g, row in enumerate(rows):
        hint = row["rationale"][: -(-len(row["rationale"]) // 4)]  # ceil(0.25 * len)
        for r in range(g * G, (g + 1) * G):
            text = tok.decode(batch["prompt_ids"][r][pm[r]])
            assert "Partial solution:\n" + hint in text, text
    expected = group_advantages([1.0, 0.0, 1.0, 0.0], trainer.scale_rewards)
    assert torch.allclose(batch["advantages"], expected.repeat(2), atol=1e-6)
    assert abs(float(expected[0]) - 0.5 / (0.5774 + 1e-4)) < 1e-3
    assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
    assert trainer._metrics["train"]["guided/prompts"][-1] == 2.0
    loss = trainer._compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)


def test_ghpo_refuses_what_it_cannot_recompute(model_dir, tmp_path):
    with pytest.raises(ValueError, match="ghpo with beta != 0"):
        _make_trainer(model_dir, tmp_path, guidance=get_preset("ghpo"),
                      config={"beta": 0.1})  # fmt: skip
    with pytest.raises(ValueError, match="guidance='luffy'"):
        _make_trainer(model_dir, tmp_path, guidance=get_preset("luffy"))


def test_vision_language_loss_and_grads_equal_trl(tmp_path):
    """A tiny Qwen2-VL with image prompts: on a batch TRL generated (pixel_values,
    image_grid_thw, mm_token_type_ids), the fused loss and every gradient equal TRL's."""
    import random

    from rgpo_fast.data.multimodal import load_processor
    from rgpo_fast.data.shapes import make_shapes
    from rgpo_fast.trainer.tiny_vl_model import TinyVLSpec, ensure_tiny_vl_model

    spec = TinyVLSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, vision_depth=1,
                      vision_embed_dim=32, vision_heads=2)
    vl_dir = ensure_tiny_vl_model(spec, tmp_path / "cache")
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(vl_dir)
    proc = load_processor(vl_dir)
    ex = make_shapes(0, 4, "easy")
    ds = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": [{"type": "image"},
                                                  {"type": "text", "text": e.problem}]}]
                   for e in ex],
        "image": [e.images[0] for e in ex], "answer": [e.answer for e in ex]})
    rng = random.Random(0)

    def reward(completions, **kw):
        return [rng.random() for _ in completions]

    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                          num_generations=G, max_completion_length=C, max_steps=1,
                          report_to="none", use_cpu=True, save_strategy="no", seed=0,
                          dataloader_num_workers=0, bf16=False, loss_type="dapo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RGPOFusedGRPOTrainer(model=model, reward_funcs=reward, args=args,
                                       train_dataset=ds, processing_class=proc, impl="torch")
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    assert inputs["pixel_values"].shape[0] == 8 * 36  # 8 rows of one 6 x 6-patch image
    # Old log-probs of another policy: ratios away from 1, some clipped.
    gen = torch.Generator().manual_seed(0)
    inputs["old_per_token_logps"] = -4.8 + 0.3 * torch.randn(inputs["completion_ids"].shape,
                                                             generator=gen)
    ref_loss, ref_g = _loss_and_grads(
        lambda m, x: trl.GRPOTrainer._compute_loss(trainer, m, x), trainer, inputs)
    loss, g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    assert trainer.rgpo_fused_calls == 1 and abs(float(ref_loss)) > 1e-6
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), (float(loss), float(ref_loss))
    assert set(g) == set(ref_g)
    assert any(n.startswith("model.visual.") for n in g)  # the vision tower is trained too
    worst = max(((g[n] - ref_g[n]).abs().max() / (ref_g[n].abs().max() + 1e-8)).item() for n in g)
    assert worst < 1e-4, f"max relative gradient difference {worst:.3g}"
