"""2 processes (gloo, FSDP2) == 1 process on the same global batch: loss and updated weights,
for one update and for 2 passes x 2 mini-batches (trainer/rl_update.py).

The test builds a fixed global batch (unguided RL rows with advantages, SFT-transferred rows,
hint-masked tokens), runs one optimisation step in this process, then launches
`torchrun --nproc_per_node 2` on this file: each rank takes every other row, shards the
policy with FSDP2, and runs the same step with micro-batch size 1 (so the ranks run
different numbers of micro-batches and the short one joins FSDP's collectives with a
zero loss). Loss normalisers are all-reduced and FSDP2 sums gradients, so the results
must match to float32 round-off.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.trainer.config import OptimConfig
from rgpo_fast.trainer.ref_policy import copy_weights
from rgpo_fast.trainer.rl_update import rl_update
from rgpo_fast.trainer.testing import tiny_model_dir, tiny_policy
from rgpo_fast.trainer.update import backward_batch, make_optimizer, optimizer_step

ROOT = Path(__file__).resolve().parents[1]
AGGS = ("token-mean", "seq-mean-token-mean")


def global_samples(vocab: int) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(7):
        p = int(torch.randint(3, 8, (1,), generator=g))
        n = int(torch.randint(2, 9, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + n,), generator=g).tolist()
        kind = "transferred" if i in (2, 5) else "unguided"
        hint = [j < 2 for j in range(n)] if i == 4 else None
        rows.append(
            Sample(
                prompt_ids=ids[:p],
                response_ids=ids[p:],
                group=i // 3,
                kind=kind,
                reward=float(torch.rand((), generator=g) > 0.5),
                hint_mask=hint,
            )
        )
    return rows


def one_step(policy, samples, agg: str, micro: int, info, lr: float = 1e-2):
    algo = get_preset("rgpo", loss_agg=agg, sft_coef=0.5)
    batch = assemble_batch(samples, algo, pad_token_id=0)
    opt = make_optimizer(policy, lr, OptimConfig())
    m = backward_batch(policy, batch, algo.loss_config(), micro, info, max_response_len=8)
    optimizer_step(policy, opt, None, grad_clip=0.05)  # small: clipping is active
    return m["loss/total"]


def ppo_step(policy, samples, micro: int, info):
    """2 passes x 2 mini-batches of whole prompts (the rows' `group` is their global
    prompt index, as rl_step numbers them); the mean loss over the 4 updates."""
    algo = get_preset("rgpo", sft_coef=0.5)
    batch = assemble_batch(samples, algo, pad_token_id=0)
    opt = make_optimizer(policy, 1e-2, OptimConfig())
    m = rl_update(policy, opt, batch, algo.loss_config(), micro=micro, info=info,
                  grad_clip=0.05, epochs=2, mini_batches=2, num_prompts=3, seed=7,
                  max_response_len=8)
    assert m["ppo/updates"] == 4
    return m["loss/total"]


def exact_loss_inputs() -> dict:
    """Loss inputs whose values bf16 cannot hold: a rounding on the way is visible."""
    lp = torch.tensor([[-7.3, -4.1234567, -0.0123456789, -5.5555555]])
    return {"advantages": torch.tensor([1.2345678]), "old_logprobs": lp,
            "ref_logprobs": lp - 0.001, "num_global_tokens": torch.tensor(10001.0),
            "num_global_seqs": torch.tensor(257.0)}


def loss_inputs_seen(policy, info) -> dict[str, torch.Tensor]:
    """Run one loss forward with `exact_loss_inputs` and return the keyword tensors as the
    fused op received them."""
    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.trainer import policy as policy_mod

    seen, real = {}, policy_mod.fused_linear_policy_loss

    def spy(hidden, weight, **kw):
        seen.update({k: v.detach().clone() for k, v in kw.items()
                     if isinstance(v, torch.Tensor) and v.is_floating_point()})
        return real(hidden, weight, **kw)

    policy_mod.fused_linear_policy_loss = spy
    try:
        ids = torch.tensor([[5, 6, 7, 8, 9]], device=info.device)
        inputs = {**exact_loss_inputs(), "targets": ids[:, 1:],
                  "mask": torch.ones(1, 4, dtype=torch.bool),
                  "config": get_preset("grpo", beta=0.01).loss_config()}
        loss, _ = policy(ids, torch.ones_like(ids), None, mode="loss", loss_inputs=inputs)
        loss.backward()
    finally:
        policy_mod.fused_linear_policy_loss = real
    return seen


def build(model_dir, compute_dtype=None):
    return tiny_policy(model_dir, compute_dtype=compute_dtype)


def vl_samples(model_dir) -> list[Sample]:
    """A global batch of the tiny Qwen2-VL: rows with one of two images (a 3 x 3 and a
    4 x 4 grid), hinted rows, and text rows, so that ranks see different mixes."""
    from PIL import Image

    from rgpo_fast.data.multimodal import PromptEncoder, load_processor
    from rgpo_fast.trainer.tiny_model import load_tokenizer

    tok = load_tokenizer(model_dir)
    enc = PromptEncoder(tok, load_processor(model_dir))
    red = enc.vision([Image.new("RGB", (84, 84), (220, 40, 40))])
    blue = enc.vision([Image.new("RGB", (112, 112), (40, 70, 220))])
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, vision in enumerate([red, red, blue, None, blue, None, red]):
        hint = "blue=3" if i == 2 else None
        prompt = enc.encode(f"red={i} green=2 blue=3\nx+1=?", hint, vision)
        n = int(torch.randint(2, 9, (1,), generator=g))
        response = torch.randint(10, 90, (n,), generator=g).tolist()
        # Each group on one rank (rank r takes rows r::2), so the ranks' group advantages
        # are the global ones; rewards that differ in both groups.
        rows.append(Sample(prompt_ids=prompt, response_ids=response, group=i % 2,
                           kind="transferred" if i == 5 else "unguided", vision=vision,
                           reward=float(i in (0, 3, 4))))
    return rows


# Adam's first step is lr * g / (|g| + eps): where the vision tower's gradient entries are
# near eps, the round-off of a different summation order (ranks, micro-batches, the rows
# that share one encoding of an image) moves the update by ~1e-3 of lr; at lr 1e-3 that
# stays inside the 1e-5 comparison.
VL_LR = 1e-3


def build_vl(model_dir):
    """The tiny Qwen2-VL as a policy with its vision tower trained (so its gradients are
    reduced across ranks too)."""
    return tiny_policy(model_dir)


def worker(model_dir: str, out_file: str, mode: str = "fp32") -> None:
    from rgpo_fast.trainer.distributed import (
        full_state_dict,
        init_distributed,
        shard_model,
        shutdown,
    )

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    results = {}
    if mode == "inputs":  # what reaches the fused op under FSDP2 with bf16 compute
        policy = shard_model(build(model_dir, torch.bfloat16), info, torch.bfloat16)
        results = {"seen": loss_inputs_seen(policy, info)}
    if mode == "bf16":
        policy = shard_model(build(model_dir, torch.bfloat16), info, torch.bfloat16)
        seen = {}  # the dtype of the parameters the forward computes with (all-gathered)

        def record(name):
            def hook(module, args):
                seen.setdefault(name, str(module.weight.dtype))
            return hook

        for name, mod in (("embedding (root unit)", policy.lm.model.embed_tokens),
                          ("layer 0 up_proj", policy.lm.model.layers[0].mlp.up_proj)):
            mod.register_forward_pre_hook(record(name))
        samples = global_samples(policy.lm.config.vocab_size)[info.rank :: info.world_size]
        loss = one_step(policy, samples, AGGS[0], 1, info, lr=LOW_LR)
        results = {"loss": loss, "params": full_state_dict(policy), "forward_dtypes": seen}
    for agg in AGGS if mode == "fp32" else ():
        policy = shard_model(build(model_dir), info)
        samples = global_samples(policy.lm.config.vocab_size)[info.rank :: info.world_size]
        loss = one_step(policy, samples, agg, 1, info)
        results[agg] = {"loss": loss, "params": full_state_dict(policy)}
    if mode == "vl":
        policy = shard_model(build_vl(model_dir), info)
        samples = vl_samples(model_dir)[info.rank :: info.world_size]
        results = {"loss": one_step(policy, samples, AGGS[0], 1, info, lr=VL_LR),
                   "params": full_state_dict(policy)}
    if mode == "fp32":
        policy = shard_model(build(model_dir), info)
        samples = global_samples(policy.lm.config.vocab_size)[info.rank :: info.world_size]
        results["ppo"] = {"loss": ppo_step(policy, samples, 1, info),
                          "params": full_state_dict(policy)}
        # the KL term's reference: a sharded copy of the sharded policy, shard by shard
        ref = shard_model(build(model_dir), info)
        copy_weights(ref, policy)
        ref_sd, pol_sd = full_state_dict(ref), full_state_dict(policy)
        results["ref_copy_equal"] = all(torch.equal(ref_sd[k], pol_sd[k]) for k in pol_sd)
    if info.rank == 0:
        torch.save(results, out_file)
    shutdown(info)
    # gloo's background threads intermittently abort the interpreter's teardown ("terminate
    # called without an active exception", exit -6) after all work is done and saved: leave
    # without it, so the exit code reports the work, not the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _tiny(tmp_path):
    return tiny_model_dir(tmp_path / "cache", layers=2)


def _launch(model_dir, out, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(Path(__file__)), str(model_dir), str(out), mode]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_processes_equal_one(tmp_path):
    from rgpo_fast.trainer.distributed import DistInfo

    model_dir = _tiny(tmp_path)
    out = tmp_path / "dist.pt"
    proc = _launch(model_dir, out, "fp32")
    torch.set_num_threads(1)
    single = {}
    for agg in AGGS:  # the single-process reference, computed while the workers run
        policy = build(model_dir)
        loss = one_step(policy, global_samples(policy.lm.config.vocab_size), agg, 3, DistInfo())
        single[agg] = {"loss": loss, "params": policy.state_dict()}
    policy = build(model_dir)
    loss = ppo_step(policy, global_samples(policy.lm.config.vocab_size), 3, DistInfo())
    single["ppo"] = {"loss": loss, "params": policy.state_dict()}
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log[-3000:]
    dist = torch.load(out, weights_only=False)
    assert dist["ref_copy_equal"]
    for agg in AGGS + ("ppo",):
        assert abs(dist[agg]["loss"] - single[agg]["loss"]) < 1e-5, agg
        moved = 0
        ref0 = build(model_dir).state_dict()
        for name, p in single[agg]["params"].items():
            q = dist[agg]["params"][name]
            # Adam's first step is lr * g / (|g| + eps): for a gradient entry near eps
            # (1e-8) the round-off of a different summation order (ranks, micro-batch
            # grouping) moves the update by ~1e-6, so 1e-5 = 1e-3 of the lr 1e-2 step.
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=f"{agg}: {name}")
            moved += not torch.equal(p, ref0[name])
        assert moved > 0.9 * len(ref0)  # the step really updated the weights


def test_vision_language_two_processes_equal_one(tmp_path):
    """The tiny Qwen2-VL sharded over 2 ranks (its decoder layers, vision blocks and tower
    as FSDP2 units): one update on a batch of image and text rows equals one process. With
    micro-batches of one row the ranks run different numbers of forwards, and a rank with
    no image in a forward runs the tower on a blank one, so the collectives stay paired."""
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.tiny_vl_model import TinyVLSpec, ensure_tiny_vl_model

    spec = TinyVLSpec(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, vision_depth=2,
                      vision_embed_dim=32, vision_heads=2)
    model_dir = ensure_tiny_vl_model(spec, tmp_path / "cache")
    out = tmp_path / "vl.pt"
    proc = _launch(model_dir, out, "vl")
    torch.set_num_threads(1)
    policy = build_vl(model_dir)
    loss = one_step(policy, vl_samples(model_dir), AGGS[0], 3, DistInfo(), lr=VL_LR)
    single = policy.state_dict()
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log[-3000:]
    dist = torch.load(out, weights_only=False)
    assert abs(dist["loss"] - loss) < 1e-5
    ref0 = build_vl(model_dir).state_dict()
    assert any(not torch.equal(single[n], ref0[n]) for n in single if ".visual." in n)
    for name, p in single.items():
        torch.testing.assert_close(dist["params"][name], p, atol=1e-5, rtol=1e-5, msg=name)


LOW_LR = 1e-6  # the lr of real RL runs: below half a bf16 ulp for most weights


def test_loss_inputs_reach_the_fused_op_unrounded_under_bf16_fsdp2(tmp_path):
    """FSDP2's mixed precision casts a root module's floating-point forward inputs to the
    compute dtype unless told not to; the loss inputs are such inputs. 2 ranks and 1 must
    hand the fused op the very fp32 values the batch holds (bf16 would make -7.3 -7.3125
    and 10001 9984)."""
    from rgpo_fast.trainer.distributed import DistInfo

    model_dir = _tiny(tmp_path)
    out = tmp_path / "inputs.pt"
    proc = _launch(model_dir, out, "inputs")
    one = loss_inputs_seen(build(model_dir, torch.bfloat16), DistInfo())
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log[-3000:]
    two = torch.load(out, weights_only=False)["seen"]
    expected = exact_loss_inputs()
    assert set(expected) <= set(two) and set(two) == set(one)
    for name, v in expected.items():
        assert two[name].dtype == torch.float32, (name, two[name].dtype)
        assert torch.equal(two[name], v), (name, two[name], v)
        assert torch.equal(one[name], two[name]), name


def test_bf16_compute_keeps_fp32_master_weights(tmp_path):
    """FSDP2 with bf16 compute (2 ranks, gloo) and a single process under autocast: one
    step at lr 1e-6 moves the fp32 master weights (in bf16 parameters it would round to
    nothing for most weights), and both give the same loss up to bf16 round-off."""
    from rgpo_fast.trainer.distributed import DistInfo

    model_dir = _tiny(tmp_path)
    out = tmp_path / "dist_bf16.pt"
    proc = _launch(model_dir, out, "bf16")
    torch.set_num_threads(1)
    policy = build(model_dir, torch.bfloat16)
    loss = one_step(policy, global_samples(policy.lm.config.vocab_size), AGGS[0], 3,
                    DistInfo(), lr=LOW_LR)  # fmt: skip
    single = policy.state_dict()
    log = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, log[-3000:]
    dist = torch.load(out, weights_only=False)
    # FSDP2 all-gathers the fp32 shards in bf16: the forward computes with bf16 parameters
    # (without the mixed-precision policy it would use the fp32 ones under autocast, and the
    # numbers below would barely change)
    assert dist["forward_dtypes"] == {"embedding (root unit)": "torch.bfloat16",
                                      "layer 0 up_proj": "torch.bfloat16"}
    assert dist["loss"] == pytest.approx(loss, rel=2e-2)
    ref0 = build(model_dir).state_dict()
    for params in (single, dist["params"]):
        changed = total = 0
        for name, p in params.items():
            assert p.dtype == torch.float32, f"{name} is {p.dtype}: no fp32 master weights"
            changed += int((p != ref0[name]).sum())
            total += p.numel()
            # As bf16, this step would have rounded away: most entries move by < half an ulp.
        assert changed > 0.9 * total, f"only {changed} of {total} weights moved at lr 1e-6"
    for name, p in single.items():  # the same step: Adam's first update is ~ lr * sign(g)
        torch.testing.assert_close(dist["params"][name], p, atol=2.5 * LOW_LR, rtol=0, msg=name)


if __name__ == "__main__":
    worker(*sys.argv[1:])


@pytest.mark.gpu
def test_fsdp2_nccl_one_rank_bf16_compute(tmp_path, monkeypatch):
    """On a GPU: FSDP2 over NCCL (a world of one) with bf16 compute and fp32 masters takes
    the same step as the unsharded policy under autocast."""
    import torch.distributed as dist

    from rgpo_fast.trainer.distributed import DistInfo, full_state_dict, shard_model

    model_dir = _tiny(tmp_path)
    dev = torch.device("cuda", 0)
    samples = global_samples(build(model_dir).lm.config.vocab_size)
    single = build(model_dir, torch.bfloat16).to(dev)
    loss1 = one_step(single, samples, AGGS[0], 3, DistInfo(device=dev), lr=LOW_LR)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0",
                 "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        info = DistInfo(rank=0, world_size=1, device=dev, backend="nccl")
        sharded = shard_model(build(model_dir, torch.bfloat16).to(dev), info, torch.bfloat16)
        loss2 = one_step(sharded, samples, AGGS[0], 3, info, lr=LOW_LR)
        params = full_state_dict(sharded)
    finally:
        dist.destroy_process_group()
    assert loss2 == pytest.approx(loss1, rel=2e-2)
    ref0 = build(model_dir).state_dict()
    for name, p in params.items():
        assert p.dtype == torch.float32, name
        torch.testing.assert_close(p, single.state_dict()[name].cpu(), atol=2.5 * LOW_LR,
                                   rtol=0, msg=name)  # fmt: skip
    moved = sum(int((p != ref0[name]).sum()) for name, p in params.items())
    assert moved > 0.9 * sum(p.numel() for p in params.values())
