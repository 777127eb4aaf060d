"""Build, cache and load the tiny Qwen2-VL model and its processor.

The vision-language counterpart of tiny_model.py: a `Qwen2VLForConditionalGeneration`
built from a config (a small vision tower, the character-level language model of
tiny_model.py with Qwen's multimodal RoPE), the same character tokenizer with Qwen's
image markers appended, and a Qwen2-VL image processor, saved with `save_pretrained` into
a cache directory keyed by a hash of their specification and always loaded back through
`AutoModelForImageTextToText` / `AutoProcessor` (data/multimodal.py: `load_processor`).

Images: the built-in visual task draws 28-pixel grid cells; with 14-pixel patches and
Qwen's 2 x 2 patch merge each cell is exactly one image token, so a 3 x 3 grid (84 pixels)
is 9 placeholder tokens and a 4 x 4 grid 16. The image processor keeps every image at its
size (min_pixels and max_pixels bracket the task's images).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rgpo_fast.trainer.tiny_model import (
    CHARS,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    build_tokenizer,
    default_cache_dir,
    save_once,
)

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_TOKENS = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# ChatML with Qwen-VL's content lists: an image entry is written as its marked placeholder.
VL_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '" + IM_START + "' + m['role'] + '\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '" + VISION_START + IMAGE_PAD + VISION_END + "' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '" + IM_END + "\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\n' }}{% endif %}"
)
PATCH = 14
MERGE = 2


@dataclass(frozen=True)
class TinyVLSpec:
    """Architecture of the tiny Qwen2-VL model (tuned for 2 CPU cores)."""

    num_hidden_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 4
    # M-RoPE gives an image token's row and column the lowest rotary frequencies of a head
    # (the last two sections). At the usual theta (1e4) and a 32-wide head they turn by
    # < 0.03 rad per cell, and neighbouring cells look alike to attention; at 20 they turn
    # by 0.1 to 0.5 rad, enough to read a grid cell by cell.
    rope_theta: float = 20.0
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"spec": asdict(self), "chars": CHARS, "special": SPECIAL_TOKENS,
                           "vision": VISION_TOKENS, "template": VL_CHAT_TEMPLATE,
                           "version": 1}, sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_processor_parts(spec: TinyVLSpec):
    """(tokenizer, image processor) of the tiny model; saved side by side they are what
    `AutoProcessor` loads as a `Qwen2VLProcessor`."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = build_tokenizer(VISION_TOKENS, VL_CHAT_TEMPLATE)
    images = Qwen2VLImageProcessorPil(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                      patch_size=PATCH, merge_size=MERGE)  # fmt: skip
    return tokenizer, images


def build_vl_model(spec: TinyVLSpec, tokenizer):
    """A randomly initialised Qwen2VLForConditionalGeneration of shape `spec` (float32)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    head_dim = spec.hidden_size // spec.num_attention_heads
    # M-RoPE splits each head's rotary half into (time, height, width) sections.
    third = head_dim // 2 // 3
    section = [head_dim // 2 - 2 * third, third, third]
    text = dict(vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
                intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_hidden_layers,
                num_attention_heads=spec.num_attention_heads,
                num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                                 "mrope_section": section},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None, tie_word_embeddings=True)  # fmt: skip
    vision = dict(depth=spec.vision_depth, embed_dim=spec.vision_embed_dim,
                  hidden_size=spec.hidden_size, num_heads=spec.vision_heads, mlp_ratio=2,
                  patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
                           vision_start_token_id=ids[VISION_START],
                           vision_end_token_id=ids[VISION_END], tie_word_embeddings=True)
    torch.manual_seed(spec.seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


class _ProcessorConfig:
    """Writes processor_config.json as a saved Qwen2VLProcessor does."""

    def save_pretrained(self, path) -> None:
        (Path(path) / "processor_config.json").write_text(
            json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))


def ensure_tiny_vl_model(spec: TinyVLSpec | None = None,
                         cache_dir: str | Path | None = None) -> Path:
    """Build and save the tiny VL model + processor once; return the directory."""
    spec = spec or TinyVLSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-qwen2-vl-{spec.key()}"
    if (target / "config.json").exists() and (target / "preprocessor_config.json").exists():
        return target
    tokenizer, images = build_processor_parts(spec)
    model = build_vl_model(spec, tokenizer)
    return save_once(target, [model, tokenizer, images, _ProcessorConfig()], asdict(spec))
