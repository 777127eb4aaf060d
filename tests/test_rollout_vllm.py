"""Colocated vLLM engine: protocol order, seeds per TP group, weight-sync bucketing and name
mapping, output conversion (CPU, with a recording stand-in for vllm.LLM); the real engine
runs under the `gpu` mark."""

import os
from types import SimpleNamespace

import pytest
import torch

from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.rollout.vllm_colocated import (
    ColocationState,
    ProtocolError,
    VLLMColocatedEngine,
    convert_outputs,
    engine_kwargs,
    engine_seed,
)
from rgpo_fast.trainer.weight_sync import bucketed, full_named_parameters, hf_name, sync_weights


class FakeLLM:
    """Records the calls a colocated step makes; generates fixed tokens with log-probs.

    Its shape is vLLM's, as read in vLLM's source (the repository snapshot this project's
    code was checked against; re-check on a vLLM upgrade): `LLM.llm_engine.model_executor`
    exists only in-process (vllm/v1/engine/llm_engine.py: set `if not multiprocess_mode`);
    the executor's `driver_worker` is a `WorkerWrapperBase` whose `.worker` is the GPU
    worker (vllm/v1/worker/worker_base.py), whose `model_runner.model` is the torch module;
    its `load_weights(weights=...)` takes (name, tensor) pairs; `LLM.sleep(level=)`,
    `LLM.wake_up(tags=)` and `LLM.reset_prefix_cache()` are the public LLM methods; the
    external-launcher executor reads RANK and LOCAL_RANK from the environment
    (vllm/v1/executor/uniproc_executor.py: ExecutorWithExternalLauncher._distributed_args).
    """

    def __init__(self):
        self.calls = []
        self.loaded = {}
        inner = SimpleNamespace(load_weights=self._load)
        runner = SimpleNamespace(model=inner)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=runner))
            )
        )

    def _load(self, weights):
        self.calls.append(("load_weights", [n for n, _ in weights]))
        self.loaded.update(dict(weights))

    def generate(self, reqs, sps, use_tqdm=False):
        assert len(sps) == len(reqs), "one SamplingParams per request"
        self.calls.append(("generate", sps[0].n))
        self.sampling = list(sps)
        self.requests = list(reqs)
        outs = []
        for sp in sps:
            comps = [
                SimpleNamespace(
                    token_ids=[5, 6],
                    finish_reason="stop",
                    logprobs=[
                        {5: SimpleNamespace(logprob=-0.5)},
                        {6: SimpleNamespace(logprob=-1.5)},
                    ],
                )
                for _ in range(sp.n)
            ]
            outs.append(SimpleNamespace(outputs=comps))
        return outs

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def _vsp(**kw):
    return SimpleNamespace(**kw)


def test_full_colocated_step_order():
    llm = FakeLLM()
    eng = VLLMColocatedEngine(llm, sampling_cls=_vsp)
    outs = eng.generate([[1, 2, 3]], SamplingParams(n=2, max_new_tokens=4, seed=1))
    assert outs[0].completions[0].token_ids == [5, 6]
    assert outs[0].completions[1].logprobs == [-0.5, -1.5]
    eng.sleep(level=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    eng.wake_up(["weights"])
    sync_weights(model, eng, bucket_mb=1)
    eng.wake_up(["kv_cache"])
    eng.generate([[1]], SamplingParams(n=1, max_new_tokens=2))
    names = [c[0] for c in llm.calls]
    assert names == [
        "generate",
        "sleep",
        "wake_up",
        "load_weights",
        "reset_prefix_cache",
        "wake_up",
        "generate",
    ]
    assert llm.calls[1] == ("sleep", 2)
    assert llm.calls[2] == ("wake_up", ("weights",)) and llm.calls[5] == ("wake_up", ("kv_cache",))
    assert set(llm.loaded) == {"0.weight", "0.bias", "1.weight", "1.bias"}


@pytest.mark.parametrize(
    "bad_sequence",
    [
        ["sleep", "generate"],  # generate while asleep
        ["sleep", "wake_kv"],  # KV before weights
        ["sleep", "wake_weights", "wake_kv"],  # wake KV without loading weights
        ["load"],  # load into an awake, unslept engine
    ],
)
def test_out_of_order_calls_fail(bad_sequence):
    st = ColocationState()
    with pytest.raises(ProtocolError):
        for call in bad_sequence:
            st.advance(call)


def test_each_prompt_has_its_own_seed_and_eos_stops():
    """Sample i of every prompt must not share random draws: one seed per request, stable
    for the same call seed; EOS ids become stop tokens (vLLM has no tokenizer here)."""
    llm = FakeLLM()
    eng = VLLMColocatedEngine(llm, sampling_cls=_vsp, eos_token_ids=[2])
    prompts = [[1, 2, 3]] * 4  # identical prompts: still different seeds
    eng.generate(prompts, SamplingParams(n=3, max_new_tokens=4, seed=7, stop_token_ids=(9,)))
    seeds = [sp.seed for sp in llm.sampling]
    assert len(set(seeds)) == 4
    assert all(sp.stop_token_ids == [2, 9] and sp.detokenize is False for sp in llm.sampling)
    eng.generate(prompts, SamplingParams(n=3, max_new_tokens=4, seed=7))
    assert [sp.seed for sp in llm.sampling] == seeds  # reproducible
    eng.generate(prompts, SamplingParams(n=3, max_new_tokens=4, seed=8))
    assert not set(sp.seed for sp in llm.sampling) & set(seeds)
    eng.generate(prompts, SamplingParams(n=3, max_new_tokens=4))
    assert all(sp.seed is None for sp in llm.sampling)  # unseeded stays unseeded
    # the sampler's truncation reaches vLLM (top_k 0 = off is vLLM's -1)
    assert all(sp.top_k == -1 and sp.top_p == 1.0 for sp in llm.sampling)
    eng.generate(prompts, SamplingParams(n=3, max_new_tokens=4, top_p=0.8, top_k=20))
    assert all(sp.top_k == 20 and sp.top_p == 0.8 for sp in llm.sampling)


def test_image_prompts_reach_vllm_with_one_placeholder_per_image():
    """vLLM runs the model's processor on the images and expands each image's placeholder
    itself: a token prompt carries one placeholder per image, the PIL images beside it; the
    outputs belong to the expanded prompt the trainer keeps."""
    from PIL import Image

    from rgpo_fast.data.multimodal import VisionInputs

    llm = FakeLLM()
    eng = VLLMColocatedEngine(llm, sampling_cls=_vsp, eos_token_ids=[2], image_token_id=7)
    imgs = (Image.new("RGB", (28, 28)), Image.new("RGB", (56, 28)))
    vision = VisionInputs(images=imgs, tensors={}, token_counts=(3, 2))
    prompt = [1, 8, 7, 7, 7, 9, 8, 7, 7, 9, 4, 5]  # two expanded images between markers
    outs = eng.generate([prompt, [1, 4]], SamplingParams(n=2, max_new_tokens=4),
                        vision=[vision, None])
    with_images, text = llm.requests
    assert with_images["prompt_token_ids"] == [1, 8, 7, 9, 8, 7, 9, 4, 5]
    assert with_images["multi_modal_data"]["image"] == list(imgs)
    assert text == {"prompt_token_ids": [1, 4]}
    assert outs[0].prompt_ids == prompt and len(outs[0].completions) == 2
    with pytest.raises(ValueError, match="no image_token_id"):
        VLLMColocatedEngine(FakeLLM(), sampling_cls=_vsp).generate(
            [prompt], SamplingParams(n=1), vision=[vision])


def test_engine_reports_the_processed_logprobs():
    """Log-probs after temperature and top-k / top-p: what the trainer recomputes."""
    kw = engine_kwargs("/m", rank=0, tp=1, gpu_memory_utilization=0.4, max_model_len=64)
    assert kw["logprobs_mode"] == "processed_logprobs"


def test_seeds_shared_inside_tp_groups_and_engine_kwargs():
    assert [engine_seed(r, 2) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [engine_seed(r, 1, 10) for r in range(3)] == [10, 11, 12]
    kw = engine_kwargs("/m", rank=5, tp=2, gpu_memory_utilization=0.4, max_model_len=4096)
    assert kw["distributed_executor_backend"] == "external_launcher"
    assert kw["enable_sleep_mode"] and kw["seed"] == 2 and kw["tensor_parallel_size"] == 2
    assert kw["skip_tokenizer_init"]  # token ids in and out: the trainer's tokenizer only


def test_bucketing_bounds_size_and_keeps_order():
    named = [(f"p{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]
    buckets = list(bucketed(named, bucket_bytes=25 * 4))
    assert [[n for n, _ in b] for b in buckets] == [["p0", "p1"], ["p2"], ["p3"], ["p4"], ["p5"]]
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]
    with pytest.raises(ValueError):
        list(bucketed(named, 0))


def test_name_mapping_and_tied_weights_sent_once():
    assert hf_name("lm.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert (
        hf_name("lm.model.layers.0._checkpoint_wrapped_module.self_attn.q_proj.weight")
        == "model.layers.0.self_attn.q_proj.weight"
    )
    assert hf_name("_orig_mod.lm.lm_head.weight") == "lm_head.weight"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rgpo_fast.trainer.policy import PolicyModule

    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
    )
    names = [n for n, _ in full_named_parameters(PolicyModule(lm), torch.bfloat16)]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert set(names) == {n for n, _ in lm.named_parameters()}


def test_convert_outputs_rejects_missing_logprobs():
    ro = SimpleNamespace(
        outputs=[SimpleNamespace(token_ids=[1, 2], finish_reason="length", logprobs=[{1: -0.1}])]
    )
    with pytest.raises(RuntimeError, match="fewer log-probs"):
        convert_outputs([[0]], [ro])


@pytest.mark.gpu
def test_real_vllm_engine_round_trip(tmp_path, monkeypatch):
    """On a GPU with vLLM: generate, sleep, wake weights, load, wake KV, generate again.
    Without torchrun, as from_config does: in-process engine, the launcher's variables."""
    pytest.importorskip("vllm")
    from vllm import LLM
    from vllm import SamplingParams as VSP

    from rgpo_fast.rollout.vllm_colocated import launcher_env

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for key, value in launcher_env(os.environ, 0, 0, 1).items():
        monkeypatch.setenv(key, value)

    from rgpo_fast.trainer.tiny_model import ensure_tiny_model, load_model_and_tokenizer

    path = ensure_tiny_model(cache_dir=tmp_path)
    model, tok = load_model_and_tokenizer(path)
    llm = LLM(
        **engine_kwargs(
            str(path), rank=0, tp=1, gpu_memory_utilization=0.2, max_model_len=256, dtype="float32"
        )
    )
    eng = VLLMColocatedEngine(llm, sampling_cls=VSP, eos_token_ids=[tok.eos_token_id])
    prompt = tok("12+3=?", add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(n=1, max_new_tokens=8, temperature=0.0)
    before = eng.generate([prompt], greedy)[0].completions[0].token_ids
    eng.sleep(level=2)
    eng.wake_up(["weights"])
    sync_weights(model, eng, bucket_mb=16)  # the same weights: the same greedy tokens
    eng.wake_up(["kv_cache"])
    assert eng.generate([prompt], greedy)[0].completions[0].token_ids == before
    with torch.no_grad():  # new weights: the engine must generate from them
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
    eng.sleep(level=2)
    eng.wake_up(["weights"])
    sync_weights(model, eng, bucket_mb=16)
    eng.wake_up(["kv_cache"])
    assert eng.generate([prompt], greedy)[0].completions[0].token_ids != before


def test_a_single_gpu_run_gets_the_launcher_variables_vllm_reads():
    """external_launcher reads RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: a run
    without torchrun gets them (else KeyError: 'RANK' inside LLM()); torchrun's are kept."""
    from rgpo_fast.rollout.vllm_colocated import launcher_env

    env = launcher_env({}, 0, 0, 1)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(env["MASTER_PORT"]) < 65536
    torchrun = {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "8", "MASTER_ADDR": "h",
                "MASTER_PORT": "29500"}
    assert launcher_env(torchrun, 3, 3, 8) == {}


def test_vllm_in_a_child_process_is_refused():
    from rgpo_fast.errors import UserError
    from rgpo_fast.rollout.vllm_colocated import check_in_process

    check_in_process({})
    check_in_process({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    with pytest.raises(UserError, match="VLLM_ENABLE_V1_MULTIPROCESSING=1 runs vLLM in a child"):
        check_in_process({"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})


def test_every_wake_returns_the_allocators_free_blocks_first(monkeypatch):
    """The last sync bucket and its bf16 pack are free blocks of torch's caching allocator
    when the KV cache wakes: they are released before it (and before the weights wake)."""
    llm = FakeLLM()
    eng = VLLMColocatedEngine(llm, sampling_cls=_vsp)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: llm.calls.append(("empty_cache",)))
    monkeypatch.setattr(eng, "_record_memory", lambda where: None)
    eng.sleep(level=2)
    eng.wake_up(["weights"])
    sync_weights(torch.nn.Linear(2, 2), eng, bucket_mb=1)
    eng.wake_up(["kv_cache"])
    names = [c[0] for c in llm.calls]
    assert names == ["sleep", "empty_cache", "wake_up", "load_weights", "reset_prefix_cache",
                     "empty_cache", "wake_up"]
