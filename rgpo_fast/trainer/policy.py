"""The trained policy: a HF causal LM whose forward ends in the fused loss, never in logits.

`PolicyModule.forward` runs the decoder (the model without lm_head) and hands the hidden
states and the lm_head weight to `fused_linear_policy_loss` / `fused_linear_logprobs`.
Doing the loss *inside* forward matters under FSDP2: the lm_head weight is only unsharded
during the root module's forward, so it must be used there.

Per-token tensors are aligned with targets: hidden[:, :-1] predicts input_ids[:, 1:].
"""

from __future__ import annotations

from typing import Any

import torch

from rgpo_fast.functional import fused_linear_logprobs, fused_linear_policy_loss


class PolicyModule(torch.nn.Module):
    """Wraps `lm` (e.g. Qwen2ForCausalLM). Parameter names are `lm.<HF name>`."""

    def __init__(self, lm: torch.nn.Module, *, impl: str = "auto", temperature: float = 1.0,
                 chunk_size: int | None = None, packed: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.impl = impl
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.packed = packed

    def _hidden(self, input_ids, attention_mask, position_ids):
        base = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model
        head = self.lm.get_output_embeddings()
        if self.packed and attention_mask is not None:
            hidden = self._packed_hidden(base, input_ids, attention_mask, position_ids)
        else:
            hidden = base(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).last_hidden_state
        return hidden[:, :-1], head.weight, getattr(head, "bias", None)

    @staticmethod
    def _packed_hidden(base, input_ids, attention_mask, position_ids):
        """Padding-free forward: the real tokens of all rows in one row, position ids
        restarting at 0 per sequence. HF reads the restarts as sequence boundaries
        (flash-attn varlen, or a block-diagonal mask), so no token sees another sequence.
        Hidden states are scattered back to the padded (B, L, H) layout for the loss."""
        keep = attention_mask.bool()  # (B, L)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        packed = base(input_ids=input_ids[keep][None], position_ids=position_ids[keep][None],
                      attention_mask=None, use_cache=False).last_hidden_state[0]  # (n, H)
        hidden = packed.new_zeros(*input_ids.shape, packed.shape[-1])  # (B, L, H)
        hidden[keep] = packed
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, *, mode: str = "loss",
                loss_kwargs: dict[str, Any] | None = None):
        """mode "loss": (loss, metrics) of `fused_linear_policy_loss(**loss_kwargs)`;
        mode "logprobs": per-target log-probs (B, L-1) float32 (no grad needed)."""
        hidden, weight, bias = self._hidden(input_ids, attention_mask, position_ids)
        if mode == "logprobs":
            logp, _ = fused_linear_logprobs(hidden, weight, input_ids[:, 1:], bias=bias,
                                            temperature=self.temperature, impl=self.impl,
                                            chunk_size=self.chunk_size)
            return logp
        if mode == "zero":
            # A rank with no data in this micro-batch slot still joins FSDP's collectives:
            # a zero loss that touches every parameter produces (zero) gradients for all.
            return hidden.sum() * 0.0 + weight.sum() * 0.0, {}
        if mode != "loss":
            raise ValueError(f"unknown PolicyModule mode {mode!r}; valid: loss, logprobs, zero")
        kw = dict(loss_kwargs or {})
        return fused_linear_policy_loss(hidden, weight, bias=bias, temperature=self.temperature,
                                        impl=self.impl, chunk_size=self.chunk_size, **kw)

    def hf_named_parameters(self):
        """(HF name, parameter) pairs: the names a rollout engine's load_weights expects."""
        for name, p in self.named_parameters():
            yield name.removeprefix("lm."), p


def enable_gradient_checkpointing(lm: torch.nn.Module) -> None:
    """Recompute decoder layers in backward (HF's implementation, non-reentrant)."""
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
