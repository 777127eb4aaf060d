"""`hf` rollout engine: batched sampling with a KV cache on any Hugging Face causal LM.

The default engine (CPU, and GPUs without vLLM). It runs its own decode loop instead of
`model.generate` so that it returns exactly what the trainer needs: the sampled ids and
each token's log-prob under the distribution it was drawn from (temperature-scaled,
top-k / top-p truncated and renormalised: the quantity the trainer recomputes with
`fused_linear_logprobs(..., temperature=T, top_p=p, top_k=k)`, and what vLLM reports with
logprobs_mode="processed_logprobs"), with a seeded generator so a run is reproducible.

The engine may share its module with the trainer (single process: no copy, no sync) or
own a replica (distributed: the sharded policy cannot run unsynchronised decode loops on
each rank, so each rank decodes with a full copy and `load_weights` refreshes it).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import torch

from rgpo_fast import vlm
from rgpo_fast.data.multimodal import VisionInputs, collate_vision
from rgpo_fast.errors import NonFiniteError
from rgpo_fast.precision import autocast_to
from rgpo_fast.rollout.base import Completion, RequestOutput, SamplingParams, images_per_prompt


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set logits below the row's k-th largest to -inf (0 = off); ties at the k-th stay."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest set with cumulative probability >= top_p to -inf.

    logits (B, V). The most likely token always survives, so a row is never empty.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass strictly before it already reaches top_p.
    drop_sorted = (probs.cumsum(-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _check_finite(t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError("the policy's next-token distribution holds NaN or inf while "
                             "sampling: the weights have diverged; lower the learning rate "
                             "(optim.lr, train.sft_lr)")


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the next token of each row; return (ids (B,), log-probs (B,) float32).

    The log-prob is that of the distribution sampled: softmax(logits / T) after top-k then
    top-p truncation (renormalised), matching what the trainer recomputes; greedy (T = 0)
    reports the T = 1 log-prob of the full softmax. A NaN/inf distribution (weights that
    diverged) is an error, not a silently arbitrary token.
    """
    logits = logits.float()
    if temperature == 0:
        _check_finite(logits)
        ids = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1)
    else:
        truncated = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
        logp = torch.log_softmax(truncated, -1)  # -inf on the dropped tokens
        probs = torch.softmax(truncated, -1)
        _check_finite(probs)  # NaN logits, or finite ones so large that softmax gives NaN
        ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


class HFEngine:
    """Rollout engine on a transformers causal LM (see module docstring)."""

    name = "hf"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        max_batch_size: int = 256,
        device: torch.device | str | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        # Autocast dtype when the module holds fp32 master weights shared with the trainer
        # (single process): decode in bf16 on GPU like the trainer computes.
        self.compute_dtype = compute_dtype
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = int(max_batch_size)
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.asleep = False
        self.loads = 0  # number of weight loads, for tests and logs
        # transformers 5 renamed the KV-cache argument of forward to `cache` and removes
        # `past_key_values` in 5.40; older versions know only the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    # -- generation ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams,
                 vision: Sequence[VisionInputs | None] | None = None) -> list[RequestOutput]:
        """n samples per prompt; `vision[i]` (or None) holds prompt i's images."""
        if self.asleep:
            raise RuntimeError("HFEngine.generate called while asleep; call wake_up() first")
        images = images_per_prompt(prompts, vision)
        rows = [(i, list(p)) for i, p in enumerate(prompts) for _ in range(params.n)]
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(params.seed))
        done: list[Completion] = []
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            done.extend(self._generate_batch([ids for _, ids in chunk], params, gen,
                                             [images[i] for i, _ in chunk]))
        outs = [RequestOutput(prompt_ids=list(p)) for p in prompts]
        for (i, _), comp in zip(rows, done):
            outs[i].completions.append(comp)
        return outs

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator | None,
        vision: list[VisionInputs | None],
    ) -> list[Completion]:
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row ends at the same column
            ids[b, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[b, L - len(p) :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        # Images enter at the first step, as embeddings in the prompts' placeholders; after
        # it the KV cache holds them.
        images = collate_vision(vision, self.device)
        slots = vlm.image_slots(self.model, ids) if images is not None else None
        pos = vlm.position_ids(self.model, ids, attn, images, slots)  # (B, L) / (3, B, L)
        first = ({"inputs_embeds": vlm.embed(self.model, ids, images, slots)} if images is not None
                 else {"input_ids": ids})  # fmt: skip
        stops = torch.tensor(self.eos_token_ids + tuple(params.stop_token_ids), device=self.device)
        cache = DynamicCache()
        out_ids = torch.full(
            (B, params.max_new_tokens), self.pad_token_id, dtype=torch.long, device=self.device
        )
        out_lp = torch.zeros((B, params.max_new_tokens), dtype=torch.float32, device=self.device)
        lengths = torch.full((B,), params.max_new_tokens, dtype=torch.long, device=self.device)
        finished = torch.zeros(B, dtype=torch.bool, device=self.device)
        step_ids, step_pos = ids, pos
        try:
            with autocast_to(self.device, self.compute_dtype):
                for t in range(params.max_new_tokens):
                    logits = self.model(
                        **(first if t == 0 else {"input_ids": step_ids}),
                        attention_mask=attn,
                        position_ids=step_pos,
                        use_cache=True,
                        logits_to_keep=1,
                        **{self._cache_arg: cache},
                    ).logits
                    nxt, lp = sample_next(logits[:, -1], params.temperature, params.top_p, gen,
                                          params.top_k)
                    nxt = torch.where(finished, torch.full_like(nxt, self.pad_token_id), nxt)
                    out_ids[:, t], out_lp[:, t] = nxt, torch.where(finished, 0.0, lp)
                    hit = torch.isin(nxt, stops) & ~finished
                    lengths = torch.where(hit, t + 1, lengths)
                    finished |= hit
                    if bool(finished.all()):
                        break
                    step_ids = nxt[:, None]
                    # Text after the prompt advances every M-RoPE axis together.
                    step_pos = step_pos[..., -1:] + 1
                    attn = torch.cat(
                        [attn, torch.ones((B, 1), dtype=attn.dtype, device=self.device)], 1
                    )
        finally:
            self.model.train(was_training)
        out_ids, out_lp, lengths = out_ids.tolist(), out_lp.tolist(), lengths.tolist()
        fin = finished.tolist()
        return [
            Completion(
                token_ids=out_ids[b][: lengths[b]],
                logprobs=out_lp[b][: lengths[b]],
                finish_reason="stop" if fin[b] else "length",
            )
            for b in range(B)
        ]

    # -- colocation protocol --------------------------------------------------------
    def sleep(self, level: int = 2) -> None:
        """Nothing to free on the HF engine (it owns no KV cache between calls); the flag
        makes protocol-order mistakes fail loudly in tests."""
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.asleep = False

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full tensors by HF parameter name; a tensor that already *is* the engine's
        parameter (shared module) is skipped."""
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"load_weights: engine has no parameter {name!r}")
            dst = params[name]
            if dst.data_ptr() == tensor.data_ptr():
                continue
            dst.copy_(tensor.to(device=dst.device, dtype=dst.dtype))
        self.loads += 1
