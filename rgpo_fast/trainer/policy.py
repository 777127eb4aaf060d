"""The trained policy: a HF causal LM whose forward ends in the fused loss, never in logits.

`PolicyModule.forward` runs the decoder (the model without lm_head) and hands the hidden
states and the lm_head weight to `fused_linear_policy_loss` / `fused_linear_logprobs`.
Doing the loss *inside* forward matters under FSDP2: the lm_head weight is only unsharded
during the root module's forward, so it must be used there.

Per-token tensors are aligned with targets: hidden[:, :-1] predicts input_ids[:, 1:].

Mixed precision (rgpo_fast/precision.py): parameters are fp32 master weights and
`compute_dtype` (bf16 on GPU) is what the matmuls see. The fused loss gets hidden states and
lm_head weight in the compute dtype; gradients flow back to the fp32 parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from rgpo_fast import vlm
from rgpo_fast.data.multimodal import VisionBatch
from rgpo_fast.functional import fused_linear_logprobs, fused_linear_policy_loss
from rgpo_fast.precision import autocast_to
from rgpo_fast.trainer.distributed import is_sharded


class PolicyModule(torch.nn.Module):
    """Wraps `lm` (e.g. Qwen2ForCausalLM). Parameter names are `lm.<HF name>`."""

    def __init__(self, lm: torch.nn.Module, *, impl: str = "auto", temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, chunk_size: int | None = None,
                 packed: bool = False, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.impl = impl
        # The rollout sampler's options: every log-prob the trainer computes (old, reference,
        # the loss's, the SFT warm start's) is of the distribution the engine draws from.
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.packed = packed
        self.compute_dtype = compute_dtype  # None: the parameters' dtype

    def _hidden(self, input_ids, attention_mask, position_ids, vision, prompt_lens):
        base = vlm.decoder(self.lm)
        head = self.lm.get_output_embeddings()
        with autocast_to(input_ids.device, self.compute_dtype):
            # A sharded vision-language model runs its tower in every forward, before the
            # decoder as with images: the ranks' all-gathers must come in one order.
            idle = (vlm.idle_vision(self.lm, input_ids) if vision is None and
                    vlm.is_vision_language(self.lm) and is_sharded(self) else None)  # fmt: skip
            if vision is not None:
                # The images through the vision tower into the prompts' placeholders, and
                # the engine's positions (M-RoPE for Qwen-VL); packing is for text rows.
                mask = (attention_mask if attention_mask is not None
                        else torch.ones_like(input_ids))  # fmt: skip
                slots = vlm.image_slots(self.lm, input_ids, prompt_lens)
                hidden = base(inputs_embeds=vlm.embed(self.lm, input_ids, vision, slots),
                              attention_mask=attention_mask, use_cache=False,
                              position_ids=vlm.position_ids(self.lm, input_ids, mask, vision,
                                                            slots)).last_hidden_state
            elif self.packed and attention_mask is not None:
                hidden = self._packed_hidden(base, input_ids, attention_mask, position_ids)
            else:
                hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, use_cache=False).last_hidden_state
            if idle is not None:
                hidden = hidden + idle.to(hidden.dtype)
        weight, bias = head.weight, getattr(head, "bias", None)
        # The fused op takes one dtype for hidden and weight: the compute dtype. Under
        # autocast the final RMSNorm returns fp32 (fp32 weight times bf16 input); the casts
        # are differentiable, so the gradients reach the fp32 master weights.
        cd = self.compute_dtype or weight.dtype
        hidden, weight = hidden.to(cd), weight.to(cd)
        bias = bias.to(cd) if bias is not None else None
        return hidden[:, :-1], weight, bias

    @staticmethod
    def _packed_hidden(base, input_ids, attention_mask, position_ids):
        """Padding-free forward: the real tokens of all rows in one row, position ids
        restarting at 0 per sequence, so no token sees another sequence. Hidden states are
        scattered back to the padded (B, L, H) layout for the loss.

        The sequence boundaries go to attention as flash-attn varlen arguments
        (`cu_seq_lens_*`, `max_length_*`), computed here once per forward; without them
        transformers re-derives them from the position ids in every layer, a `nonzero()`
        and a host sync per layer. sdpa / eager ignore them and build a block-diagonal mask
        from the restarting position ids instead."""
        keep = attention_mask.bool()  # (B, L)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        varlen = varlen_kwargs(attention_mask)
        packed = base(input_ids=input_ids[keep][None], position_ids=position_ids[keep][None],
                      attention_mask=None, use_cache=False, **varlen).last_hidden_state[0]
        hidden = packed.new_zeros(*input_ids.shape, packed.shape[-1])  # (B, L, H)
        hidden[keep] = packed  # (n, H) -> (B, L, H)
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, *, mode: str = "loss",
                loss_inputs: dict[str, Any] | None = None,
                vision: VisionBatch | None = None,
                prompt_lens: torch.Tensor | None = None):
        """mode "loss": (loss, metrics) of `fused_linear_policy_loss(**loss_inputs)` (tensors,
        normalisers and `config`; the rollout's temperature, top_p and top_k are set here);
        mode "logprobs": per-target log-probs (B, L-1) float32 (no grad needed). `vision`:
        the rows' images (data.multimodal.collate_vision) for a vision-language model, whose
        placeholders are those of the first `prompt_lens[b]` tokens of row b."""
        hidden, weight, bias = self._hidden(input_ids, attention_mask, position_ids, vision,
                                            prompt_lens)
        if mode == "logprobs":
            logp, _ = fused_linear_logprobs(hidden, weight, input_ids[:, 1:], bias=bias,
                                            temperature=self.temperature, top_p=self.top_p,
                                            top_k=self.top_k, impl=self.impl,
                                            chunk_size=self.chunk_size)
            return logp
        if mode == "zero":
            # A rank with no data in this micro-batch slot still joins FSDP's collectives:
            # a zero loss that touches every parameter produces (zero) gradients for all.
            return hidden.sum() * 0.0 + weight.sum() * 0.0, {}
        if mode != "loss":
            raise ValueError(f"unknown PolicyModule mode {mode!r}; valid: loss, logprobs, zero")
        kw = dict(loss_inputs or {})
        return fused_linear_policy_loss(hidden, weight, bias=bias, temperature=self.temperature,
                                        top_p=self.top_p, top_k=self.top_k, impl=self.impl,
                                        chunk_size=self.chunk_size, **kw)


def varlen_kwargs(attention_mask: torch.Tensor) -> dict[str, Any]:
    """flash-attn varlen arguments of the rows of a right-padded (B, L) mask packed into one
    row: cumulative lengths (B + 1,) int32 and the longest length as a Python int (one host
    sync per forward, where transformers would otherwise sync once per layer)."""
    lengths = attention_mask.sum(-1, dtype=torch.int32)  # (B,)
    lengths = lengths[lengths > 0]
    cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))  # (B + 1,)
    longest = int(lengths.max()) if lengths.numel() else 0
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
            "max_length_k": longest}


def enable_gradient_checkpointing(lm: torch.nn.Module) -> None:
    """Recompute decoder layers in backward (HF's implementation, non-reentrant).
    transformers 5 renamed it activation checkpointing (the old name goes in v6)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    lm.config.use_cache = False
