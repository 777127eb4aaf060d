"""Driving a Hugging Face vision-language model the way the trainer drives a causal LM.

The policy forward (trainer/policy.py) and the `hf` rollout engine call the same three
things, so a prompt's tokens get the same positions and the same image features in
generation and in training (their log-probs agree, tests/test_vision_language.py):

- `decoder(lm)`: the module that turns ids (+ images) into the language model's hidden
  states: for a vision-language model the multimodal body (`lm.model`: vision tower,
  placeholder merge, language model), for a causal LM its decoder;
- `position_ids(lm, ids, attention_mask, vision)`: Qwen-VL models rotate image tokens by
  (time, height, width) positions (M-RoPE, shape (3, B, L)), computed from where the
  placeholders are and each image's patch grid; text rows and causal LMs get the usual
  positions counting real tokens (padding on either side);
- `vision_tower(lm)` / `freeze_vision(lm)`: the image encoder (with its projector), which
  `model.freeze_vision` keeps fixed;
- `idle_vision(lm, like)`: a zero that ran through the vision tower, for a forward without
  images on a sharded model: FSDP2 gathers the tower's shards in every forward of every
  rank, so a rank whose batch has no image must run it too, or the ranks' collectives part.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from rgpo_fast.data.multimodal import VisionBatch


def is_vision_language(lm_or_config: Any) -> bool:
    """Does a model (or its config) have a vision tower (a `vision_config`)?"""
    config = getattr(lm_or_config, "config", lm_or_config)
    return getattr(config, "vision_config", None) is not None


def decoder(lm: torch.nn.Module) -> torch.nn.Module:
    if is_vision_language(lm):
        return lm.model
    return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model


def vision_tower(lm: torch.nn.Module) -> torch.nn.Module | None:
    """The image encoder of a vision-language model (Qwen-VL: `visual`, which holds its
    merger; LLaVA-style: `vision_tower`), None for a causal LM."""
    if not is_vision_language(lm):
        return None
    body = lm.model
    for name in ("visual", "vision_tower", "vision_model"):
        if isinstance(getattr(body, name, None), torch.nn.Module):
            return getattr(body, name)
    raise ValueError(f"{type(lm).__name__}: no vision tower found (looked for visual, "
                     "vision_tower, vision_model)")


def freeze_vision(lm: torch.nn.Module) -> int:
    """Stop gradients into the vision tower; returns how many parameters it froze."""
    tower = vision_tower(lm)
    if tower is None:
        return 0
    tower.requires_grad_(False)
    return sum(p.numel() for p in tower.parameters())


def idle_vision(lm: torch.nn.Module, like: torch.Tensor) -> torch.Tensor:
    """0 * the features of one blank image of the smallest grid (Qwen-VL: 2 x 2 patches,
    one token): a float32 scalar on `like`'s device."""
    vc = lm.config.vision_config
    patch = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    merge = vc.spatial_merge_size
    pixels = torch.zeros(merge * merge, patch, device=like.device)
    grid = torch.tensor([[1, merge, merge]], device=like.device)
    out = lm.model.get_image_features(pixel_values=pixels, image_grid_thw=grid,
                                      return_dict=True).pooler_output
    feats = torch.cat(list(out), 0) if isinstance(out, (list, tuple)) else out
    return feats.float().sum() * 0.0


def text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions counting the real tokens of each row (padding at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def image_slots(lm: torch.nn.Module, input_ids: torch.Tensor,
                prompt_lens: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) bool: the image placeholders of each row's prompt (the first `prompt_lens[b]`
    tokens; None: the whole row is prompt). A placeholder id the model sampled in its
    response is an ordinary token: only the processor's placeholders receive image
    features, in generation and in training alike."""
    slots = input_ids == lm.config.image_token_id
    if prompt_lens is not None:
        cols = torch.arange(input_ids.shape[1], device=input_ids.device)
        slots &= cols[None, :] < prompt_lens.to(input_ids.device)[:, None]
    return slots


def position_ids(lm: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 vision: VisionBatch | None, slots: torch.Tensor | None = None) -> torch.Tensor:
    """Position ids of a (B, L) batch: (3, B, L) M-RoPE positions for a Qwen-VL model whose
    batch has images (`slots`: `image_slots`), else (B, L). `vision`: the batch's images
    (data.multimodal.collate_vision)."""
    rope_index = getattr(getattr(lm, "model", None), "get_rope_index", None)
    grid = vision.grids() if vision is not None else None
    if rope_index is None or grid is None:
        return text_positions(attention_mask)
    kw: dict[str, Any] = {"image_grid_thw": grid, "attention_mask": attention_mask}
    if "mm_token_type_ids" in inspect.signature(rope_index).parameters:
        kw["mm_token_type_ids"] = slots.int()
    positions, _ = rope_index(input_ids, **kw)
    return positions


def embed(lm: torch.nn.Module, input_ids: torch.Tensor, vision: VisionBatch,
          slots: torch.Tensor) -> torch.Tensor:
    """(B, L, H) input embeddings with each image's features in its placeholders (`slots`,
    row-major). The tower encodes each distinct image once; its features are repeated for
    every row that shows it (`vision.order`). Done here rather than by the model's forward,
    which would also fill placeholder ids the model sampled."""
    body = lm.model
    embeds = body.get_input_embeddings()(input_ids)
    out = body.get_image_features(**vision.tensors, return_dict=True).pooler_output
    per_image = list(out)  # Qwen-VL: a tuple of (tokens, H) per image; else (n, tokens, H)
    feats = torch.cat([per_image[i] for i in vision.order.tolist()], 0)
    feats = feats.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    n = int(slots.sum())
    if n != feats.shape[0]:
        raise ValueError(f"the prompts hold {n} image placeholders for {feats.shape[0]} "
                         "image features: the prompt ids and the images do not belong together")
    return embeds.masked_scatter(slots[..., None], feats)
