"""Build, cache and load the tiny Qwen2 model and character-level tokenizer.

The built-in default run and the tests need a real causal LM without any download. We build
one from a `Qwen2Config` and a tokenizer from the `tokenizers` library, save both with
`save_pretrained` into a cache directory keyed by a hash of their specification, and always
load them back through `AutoModelForCausalLM/AutoTokenizer.from_pretrained` so the default
run exercises the same loading code as a real checkpoint.

Character-level tokens keep the vocabulary at ~100 entries: the lm_head is tiny and a
model of a few hundred thousand parameters can learn the built-in tasks on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Special tokens follow Qwen's chat markup so chat templates look familiar.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
# Printable ASCII plus newline: every character the built-in task and templates produce.
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]
UNK_TOKEN = "<|unk|>"

# A minimal ChatML template. The assistant turn ends with <|im_end|>, which is the EOS token,
# so generation stops exactly where the chat turn ends.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of the tiny Qwen2 model (tuned for speed on 2 CPU cores)."""

    num_hidden_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 2048  # RoPE: no parameters, room for long hinted prompts
    tie_word_embeddings: bool = True
    seed: int = 0

    def key(self) -> str:
        """Stable cache key: hash of the spec and of the tokenizer layout."""
        blob = json.dumps(
            {
                "spec": asdict(self),
                "chars": CHARS,
                "special": SPECIAL_TOKENS,
                "template": CHAT_TEMPLATE,
                # 2: newline runs tokenised per character; 3: byte-level vocabulary that
                # AutoTokenizer loads unchanged (same ids as 2)
                "version": 3,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$RGPO_FAST_CACHE` or ~/.cache/rgpo_fast (outside the repository, never committed)."""
    root = os.environ.get("RGPO_FAST_CACHE") or os.path.join(Path.home(), ".cache", "rgpo_fast")
    return Path(root)


def build_tokenizer(extra_special: Sequence[str] = (), chat_template: str = CHAT_TEMPLATE):
    """A character-level Qwen2Tokenizer with ChatML specials, EOS = <|im_end|>; the
    `extra_special` tokens (a vision-language model's image markers) come after the
    characters, so every text token keeps its id.

    One token per character, and a tokenizer that any tool loads back unchanged through
    `AutoTokenizer.from_pretrained` (TRL, vLLM, a user's script). transformers 5 loads a
    directory whose config says `qwen2` with Qwen2's own tokenizer class, which rebuilds the
    pipeline around the vocabulary: NFC, Qwen's split, byte-level mapping (a space becomes
    `Ġ`, a newline `Ċ`), then BPE. So the vocabulary is written in that byte-level alphabet
    and has no merges: the BPE then leaves every character its own token, and the ids are
    the same whichever way the tokenizer is loaded (tests/test_tiny_model.py).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    byte_char = bytes_to_unicode()  # byte -> the printable character byte-level BPE uses
    chars = ["".join(byte_char[b] for b in c.encode()) for c in CHARS]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [UNK_TOKEN] + chars
                                             + list(extra_special))}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        additional_special_tokens=[IM_START, *extra_special],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tok.chat_template = chat_template
    tok.padding_side = "left"  # generation batches are left-padded
    return tok


def build_model(spec: TinyModelSpec, tokenizer):
    """A randomly initialised Qwen2ForCausalLM of shape `spec` (float32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def ensure_tiny_model(
    spec: TinyModelSpec | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Build and save the tiny model + tokenizer once; return the directory to load from.

    The directory is written to a temporary sibling and renamed into place, so concurrent
    runs (tests, torchrun ranks) never see a half-written model.
    """
    spec = spec or TinyModelSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-qwen2-{spec.key()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    tokenizer = build_tokenizer()
    model = build_model(spec, tokenizer)
    return save_once(target, [model, tokenizer], asdict(spec))


def save_once(target: Path, parts, spec: dict) -> Path:
    """`save_pretrained` each of `parts` (model, tokenizer, processor parts) and the spec
    into a temporary sibling of `target`, then rename it into place, so concurrent runs
    (tests, torchrun ranks) never see a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tiny-", dir=target.parent))
    for part in parts:
        part.save_pretrained(tmp)
    (tmp / "rgpo_fast_spec.json").write_text(json.dumps(spec, indent=2))
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process won the race; its copy is identical (same spec hash).
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_tokenizer(path, auto_cls):
    """AutoTokenizer, except for a generic `tokenizers` tokenizer in a local directory.

    Directories written before the tiny tokenizer became a Qwen2Tokenizer (cache version
    2 and older, and models trained from them) hold a generic tokenizer whose vocabulary is
    not byte-level: transformers 5 would load it with Qwen2's class (the config says
    `qwen2`) and its byte-level pipeline, which maps spaces and newlines to unknown tokens.
    Such a directory gets the generic backend it asks for; everything else, including every
    tokenizer this project writes now, loads through AutoTokenizer.
    """
    cfg_file = Path(path) / "tokenizer_config.json"
    if cfg_file.is_file():
        cls = json.loads(cfg_file.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(path))
    return auto_cls.from_pretrained(str(path))


def load_tokenizer(path: str | Path):
    """The tokenizer of a model directory, set up for generation (a pad token, left padding)."""
    from transformers import AutoTokenizer

    tokenizer = _load_tokenizer(path, AutoTokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def is_vision_language(path: str | Path) -> bool:
    """Does the model directory hold a vision-language model (a `vision_config`)?"""
    cfg_file = Path(path) / "config.json"
    return cfg_file.is_file() and "vision_config" in json.loads(cfg_file.read_text())


def load_text_processor(path: str | Path):
    """What an export saves beside the weights: the processor of a vision-language model,
    the tokenizer of a causal LM."""
    from rgpo_fast.data.multimodal import load_processor

    return load_processor(path) if is_vision_language(path) else load_tokenizer(path)


def auto_model_class(path: str | Path):
    """`AutoModelForImageTextToText` for a vision-language model, else `AutoModelForCausalLM`."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vision_language(path) else AutoModelForCausalLM


def load_model_and_tokenizer(path: str | Path, dtype=None):
    """Load any causal LM, or vision-language model, and its tokenizer through the standard
    `from_pretrained` path."""
    import torch

    tokenizer = load_tokenizer(path)
    model = auto_model_class(path).from_pretrained(str(path), dtype=dtype or torch.float32)
    return model, tokenizer
