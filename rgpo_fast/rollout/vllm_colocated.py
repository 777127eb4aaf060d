"""`vllm` rollout engine: one in-process vLLM engine per trainer rank, on the same GPU.

Protocol (docs/trainer.md, "GPUs: FSDP2 and colocated vLLM"), enforced by a small state machine so
ordering mistakes fail loudly instead of producing garbage:

    generate()                     state "awake"
    sleep(level=2)                 -> "asleep"      drops weights and KV cache, no host copy
    (trainer forward/backward/step; torch.cuda.empty_cache())
    wake_up(["weights"])           -> "weights"     weight memory only: peak < model + KV
    load_weights(buckets...)       -> "loaded"      full tensors (FSDP2 gathered), bucketed;
                                                    then reset_prefix_cache()
    wake_up(["kv_cache"])          -> "awake"

Traps this order avoids: loading into sleeping memory; a stale prefix cache after a weight
load; generating after a level-2 wake without a full weight load (garbage output).

Engine construction: `distributed_executor_backend="external_launcher"` makes vLLM run
inside the trainer's process (in-process V1, VLLM_ENABLE_V1_MULTIPROCESSING=0; a user's =1
is refused, as the weight sync needs the model in this process), one engine per GPU; a run
without torchrun gets the RANK / WORLD_SIZE / MASTER_* variables that executor reads
(`launcher_env`). tensor_parallel_size is 1: the config refuses more, because the ranks of
a TP group would have to submit identical requests. The trainer owns tokenisation: requests are
token ids, outputs are read as token ids, so vLLM loads no tokenizer
(`skip_tokenizer_init`) and stops at the trainer's EOS ids, given as stop tokens. Each
prompt gets its own sampling seed (`prompt_seed`). The engine returns its own log-probs,
which the trainer uses for truncated importance sampling against its recomputed ones
(docs/rgpo.md).

vLLM needs a CUDA GPU; it is imported lazily so this module (state machine, request
building, output conversion) is importable and tested on CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from rgpo_fast.errors import UserError
from rgpo_fast.rollout.base import (
    Completion,
    RequestOutput,
    SamplingParams,
    images_per_prompt,
    prompt_seed,
)

# Allowed transitions: state -> {call: next state}
_TRANSITIONS = {
    "awake": {"generate": "awake", "sleep": "asleep"},
    "asleep": {"wake_weights": "weights", "wake_all": "awake_unloaded"},
    "weights": {"load": "loaded"},
    "loaded": {"load": "loaded", "wake_kv": "awake"},
    "awake_unloaded": {"load": "awake"},
}


class ProtocolError(RuntimeError):
    """A colocation call out of order (e.g. generate while asleep)."""


class ColocationState:
    """Tracks the engine through the sleep / wake / load cycle (pure, CPU-testable)."""

    def __init__(self) -> None:
        self.state = "awake"
        self.history: list[str] = []

    def advance(self, call: str) -> None:
        nxt = _TRANSITIONS[self.state].get(call)
        if nxt is None:
            raise ProtocolError(
                f"vllm engine: {call!r} not allowed in state {self.state!r}; allowed: "
                f"{', '.join(_TRANSITIONS[self.state])}"
            )
        self.history.append(call)
        self.state = nxt


def engine_seed(rank: int, tp: int, base_seed: int = 0) -> int:
    """Seed of this rank's engine: identical inside a tensor-parallel group."""
    return base_seed + rank // tp


def engine_kwargs(
    model: str,
    *,
    rank: int,
    tp: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> dict:
    """Keyword arguments of `vllm.LLM` for a colocated, sleepable, in-process engine."""
    return {
        "model": model,
        "tensor_parallel_size": tp,
        "distributed_executor_backend": "external_launcher",
        "enable_sleep_mode": True,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "dtype": dtype,
        "seed": engine_seed(rank, tp, seed),
        "enable_prefix_caching": True,
        # Token ids in, token ids out: the trainer's tokenizer is the only one.
        "skip_tokenizer_init": True,
        # Log-probs after temperature scaling and top-k / top-p truncation: the same quantity
        # the trainer recomputes (fused_linear_logprobs at the rollout's temperature, top_p
        # and top_k) for the rollout correction.
        "logprobs_mode": "processed_logprobs",
    }


def to_vllm_sampling(params: SamplingParams, vllm_sampling_cls, *, seed: int | None = None,
                     eos_token_ids: Sequence[int] = ()):
    """Our SamplingParams -> vllm.SamplingParams (log-prob of the sampled token only).

    `seed` is this request's own seed; `eos_token_ids` join the stop tokens (without a
    tokenizer vLLM does not know the EOS id)."""
    stops = list(dict.fromkeys([*eos_token_ids, *params.stop_token_ids]))
    return vllm_sampling_cls(
        n=params.n,
        max_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,  # -1: off in every vLLM release
        seed=seed,
        logprobs=0,
        stop_token_ids=stops or None,
        detokenize=False,
    )


def convert_outputs(prompts: Sequence[list[int]], vllm_outputs) -> list[RequestOutput]:
    """vLLM RequestOutputs -> ours: token ids, sampled-token log-probs, finish reason."""
    outs = []
    for prompt, ro in zip(prompts, vllm_outputs):
        comps = []
        for c in ro.outputs:
            ids = list(c.token_ids)
            lps = []
            for tok, entry in zip(ids, c.logprobs or []):
                lp = entry[tok]
                lps.append(float(getattr(lp, "logprob", lp)))
            if len(lps) != len(ids):
                raise RuntimeError("vllm returned fewer log-probs than tokens")
            comps.append(
                Completion(
                    token_ids=ids,
                    logprobs=lps,
                    finish_reason="stop" if c.finish_reason == "stop" else "length",
                )
            )
        outs.append(RequestOutput(prompt_ids=list(prompt), completions=comps))
    return outs


def multimodal_request(prompt: Sequence[int], vision: Any, image_token_id: int | None) -> dict:
    """vLLM's token prompt for `prompt`. With images, vLLM runs the model's processor on
    them and expands each image's placeholder itself: it takes one placeholder token per
    image, so each run of placeholders (the processor's expansion, data/multimodal.py) is
    collapsed to one; its outputs then continue the same expanded prompt the trainer
    recomputes."""
    if vision is None:
        return {"prompt_token_ids": list(prompt)}
    if image_token_id is None:
        raise ValueError("images given to a vLLM engine whose model has no image_token_id")
    ids = [t for i, t in enumerate(prompt)
           if t != image_token_id or i == 0 or prompt[i - 1] != image_token_id]  # fmt: skip
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": list(vision.images)}}


def check_in_process(environ) -> None:
    """The weight sync reaches into the engine's model: vLLM must run in this process.
    `VLLM_ENABLE_V1_MULTIPROCESSING=1` (set by the user) would move it to a child process."""
    value = environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if value not in (None, "", "0"):
        raise UserError(f"VLLM_ENABLE_V1_MULTIPROCESSING={value} runs vLLM in a child "
                          "process, where the trainer cannot load new weights into it; unset it "
                          "(the colocated engine sets it to 0)")


def launcher_env(environ, rank: int, local_rank: int, world_size: int) -> dict[str, str]:
    """The torchrun variables vLLM's external_launcher executor reads (RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT) that `environ` lacks: a single-GPU run started
    without torchrun has none of them and would fail with KeyError: 'RANK'. Under torchrun
    nothing is returned."""
    want = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1"}  # fmt: skip
    out = {k: v for k, v in want.items() if k not in environ}
    if "MASTER_PORT" not in environ:
        import socket

        with socket.socket() as sock:  # a free port: vLLM's process group of one binds it
            sock.bind(("127.0.0.1", 0))
            out["MASTER_PORT"] = str(sock.getsockname()[1])
    return out


def _inner_model(llm):
    """The torch module inside an in-process vLLM engine (V1 with external_launcher)."""
    paths = (
        ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner", "model"),
        ("llm_engine", "model_executor", "driver_worker", "model_runner", "model"),
    )
    for path in paths:
        obj = llm
        try:
            for attr in path:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            continue
    raise RuntimeError("cannot reach the vLLM model for load_weights (unsupported vLLM version)")


class VLLMColocatedEngine:
    """Rollout engine on vLLM sharing the trainer's GPU (see module docstring)."""

    name = "vllm"

    def __init__(self, llm, *, sampling_cls, state: ColocationState | None = None,
                 eos_token_ids: Sequence[int] = (), image_token_id: int | None = None) -> None:
        self.llm = llm
        self._sampling_cls = sampling_cls
        self.state = state or ColocationState()
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.image_token_id = image_token_id  # a vision-language model's placeholder id
        self.memory: dict[str, float] = {}  # GiB in use on the device after the last of each

    def _record_memory(self, event: str) -> None:
        """Device memory in use (all allocators: vLLM's sleep pool is not torch's cache),
        after `event`: what colocation frees and takes back, per step."""
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            self.memory[f"memory/after_{event}_gb"] = round((total - free) / 2**30, 3)

    def memory_report(self) -> dict[str, float]:
        return dict(self.memory)

    @classmethod
    def from_config(cls, model_dir: str, cfg, info, max_model_len: int,
                    eos_token_ids: Sequence[int] = ()) -> VLLMColocatedEngine:
        """`max_model_len` from trainer/preflight.check_sequence_lengths (checked against
        the model's positions before anything is loaded)."""
        if info.device.type != "cuda":
            raise UserError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on CPU")
        try:
            from vllm import LLM
            from vllm import SamplingParams as VSP
        except ImportError:
            raise UserError(
                "rollout.engine=vllm but vllm is not installed (pip install 'rgpo_fast[gpu]')"
            ) from None
        from rgpo_fast.versions import check_gpu_stack

        check_gpu_stack()
        check_in_process(os.environ)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        for key, value in launcher_env(os.environ, info.rank, info.local_rank,
                                       info.world_size).items():  # fmt: skip
            os.environ[key] = value
        llm = LLM(
            **engine_kwargs(
                model_dir,
                rank=info.rank,
                tp=cfg.rollout.tensor_parallel_size,
                gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                max_model_len=max_model_len,
                seed=cfg.train.seed,
            )
        )
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(llm, sampling_cls=VSP, eos_token_ids=eos_token_ids,
                   image_token_id=config.get("image_token_id"))

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams,
                 vision: Sequence[Any] | None = None) -> list[RequestOutput]:
        """n samples per prompt; `vision[i]` (data.multimodal.VisionInputs or None) holds
        prompt i's images, which vLLM processes itself (see `multimodal_request`)."""
        self.state.advance("generate")
        images = images_per_prompt(prompts, vision)
        sps = [
            to_vllm_sampling(params, self._sampling_cls, eos_token_ids=self.eos_token_ids,
                             seed=None if params.seed is None else prompt_seed(params.seed, i))
            for i in range(len(prompts))
        ]  # fmt: skip
        reqs = [multimodal_request(p, v, self.image_token_id) for p, v in zip(prompts, images)]
        return convert_outputs(prompts, self.llm.generate(reqs, sps, use_tqdm=False))

    def sleep(self, level: int = 2) -> None:
        self.state.advance("sleep")
        self.llm.sleep(level=level)
        self._record_memory("sleep")

    def wake_up(self, tags: list[str] | None = None) -> None:
        if tags == ["weights"]:
            self.state.advance("wake_weights")
        elif tags == ["kv_cache"]:
            self.state.advance("wake_kv")
        else:
            self.state.advance("wake_all")
        if torch.cuda.is_available():
            # Before every wake, give the caching allocator's free blocks back to the driver:
            # vLLM allocates its weights and KV cache outside torch's allocator, so blocks
            # the trainer freed (its activations before the weights wake; the last sync
            # bucket and its bf16 pack, ~1.5 GB at 1024 MB buckets, before the KV wake)
            # would otherwise still hold memory the wake needs.
            torch.cuda.empty_cache()
        self.llm.wake_up(tags=tags)
        self._record_memory("wake_" + ("_".join(tags) if tags else "all"))

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.state.advance("load")
        _inner_model(self.llm).load_weights(weights=list(named_tensors))
        # Cached prefixes hold keys/values of the old weights.
        self.llm.reset_prefix_cache()
