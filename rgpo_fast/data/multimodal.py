"""Images in prompts: loading them, the model's processor, and multimodal prompt ids.

A vision-language example carries its images (`Example.images`, PIL images decoded once
when the data is read). Per prompt the model's own processor (`AutoProcessor`) turns them
into `VisionInputs`: the tensors the vision tower reads (`pixel_values`, and for the
Qwen-VL family `image_grid_thw`), the number of placeholder tokens each image takes in the
prompt ids, and the images themselves (vLLM runs its own processor on them). Every sample
of a prompt, guided or not, shares that one object: images are processed once per
prompt, never per sample.

Prompt ids come from the processor's chat template, with the image entries before the
text (what Qwen2-VL and Qwen2.5-VL were trained with), or where the problem text marks
them with `<image>` (one marker per image, as Geometry3K-style datasets write their
problems); each image's placeholder is then
repeated as many times as the processor's expansion of it, so a hinted prompt (same
images, more text) needs no second pass over the pixels. The language model then sees
the placeholder tokens, whose embeddings the model replaces with the vision tower's
output; the fused loss reads only the language model's hidden states, as for text.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rgpo_fast.data.prompts import DEFAULT_HINT_TEMPLATE, encode_prompt, user_message
from rgpo_fast.errors import UserError

IMAGE_MARKER = "<image>"  # where a problem text places its images (optional)
# Processor outputs that describe the text, not the images: rebuilt from the prompt ids.
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class ImageError(UserError, ValueError):
    """An image that cannot be used: a missing file, bytes that do not decode, an image
    given to a model without a vision tower. The message names the row and field."""


def load_image(value: Any, where: str, base_dir: Path | None = None):
    """One image cell -> an RGB PIL image, decoded now (a corrupt file fails here, naming
    `where`, not in the middle of a step). A cell is a PIL image, bytes, a path (relative
    paths are read from `base_dir`, the data file's folder) or a Hugging Face `Image`
    feature's dict {"bytes": ..., "path": ...}."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, dict):  # datasets' Image feature, decode=False or parquet export
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(value))
            img.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"{where}: the image bytes do not decode ({e})") from None
    elif isinstance(value, (str, Path)) and str(value).strip():
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ImageError(f"{where}: image file not found: {path}")
        try:
            with Image.open(path) as f:
                f.load()
                img = f.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"{where}: {path} is not a readable image ({e})") from None
    else:
        raise ImageError(f"{where} must be an image path, bytes or an image, "
                         f"got {type(value).__name__} {value!r:.60}")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_images(value: Any, where: str, base_dir: Path | None = None) -> tuple:
    """An `images` cell -> a tuple of RGB images: None / "" / [] -> (), one image, or a
    list (a JSON list, or the text of one in a CSV cell)."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ImageError(f"{where}: not a JSON list of images ({e.msg})") from None
    if isinstance(value, str) and not value.strip():
        return ()
    items = list(value) if isinstance(value, (list, tuple)) or _is_array(value) else [value]
    return tuple(load_image(v, f"{where}[{i}]" if len(items) > 1 else where, base_dir)
                 for i, v in enumerate(items))  # fmt: skip


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and getattr(value, "ndim", 0) == 1


@dataclass(eq=False)
class VisionInputs:
    """The images of one prompt as the model reads them (see module docstring)."""

    images: tuple  # the PIL images, in prompt order
    tensors: dict[str, torch.Tensor]  # processor outputs, image-major along dim 0
    token_counts: tuple[int, ...]  # placeholder tokens of each image in the prompt ids


@dataclass(eq=False)
class VisionBatch:
    """The images of a batch's rows, each distinct prompt's images processed once.

    `tensors` hold the distinct `VisionInputs` (first appearance first), image-major along
    dim 0 as the processor writes them; `order` lists, for every image of every row in row
    order, which of those images it is. The vision tower then encodes each distinct image
    once per forward, and its features go to every row that shows it (their gradients add
    up): a prompt's G samples in one micro-batch cost one encoding, not G.
    """

    tensors: dict[str, torch.Tensor]
    order: torch.Tensor  # (images in the rows,) long: index into the distinct images

    def to(self, device: torch.device | str) -> VisionBatch:
        return VisionBatch({k: v.to(device) for k, v in self.tensors.items()},
                           self.order.to(device))

    def grids(self, key: str = "image_grid_thw") -> torch.Tensor | None:
        """Each row-image's grid, in row order (None: the processor writes no grids)."""
        grid = self.tensors.get(key)
        return None if grid is None else grid[self.order]


def collate_vision(rows: Sequence[VisionInputs | None],
                   device: torch.device | str | None = None) -> VisionBatch | None:
    """The images of a batch whose row b shows `rows[b]`'s (None: a text row), each distinct
    `VisionInputs` once (see VisionBatch); None when no row has images."""
    first: dict[int, int] = {}  # id(VisionInputs) -> index of its first image
    images: list[VisionInputs] = []
    order: list[int] = []
    n = 0  # images of the distinct VisionInputs so far
    for r in rows:
        if r is None:
            continue
        if id(r) not in first:
            first[id(r)] = n
            n += len(r.token_counts)
            images.append(r)
        order.extend(range(first[id(r)], first[id(r)] + len(r.token_counts)))
    if not images:
        return None
    keys = images[0].tensors.keys()
    batch = VisionBatch({k: torch.cat([v.tensors[k] for v in images], 0) for k in keys},
                        torch.tensor(order, dtype=torch.long))
    return batch.to(device) if device is not None else batch


def refuse_images(sets: dict[str, Sequence[Any]], model: Any) -> None:
    """ImageError when an example of `sets` (name -> examples) has images: for a model
    without a vision tower, checked before anything is trained."""
    for name, examples in sets.items():
        ex = next((e for e in examples if e.images), None)
        if ex is not None:
            raise ImageError(f"{name}: problem {ex.uid} has {len(ex.images)} image(s) but the "
                             f"model {model} has no vision tower: use a vision-language model "
                             "(for the built-in one, --model.tiny qwen2-vl)")


class ProcessorError(UserError, RuntimeError):
    """A vision-language model directory whose processor cannot be built."""


def load_processor(path: str | Path):
    """The processor of a model directory: `AutoProcessor.from_pretrained`.

    transformers 5 cannot build a processor that also declares a video processor (Qwen2-VL,
    Qwen2.5-VL) where torchvision is not installed, even to process images only. Then the
    same processor class is built from the parts that need no torchvision (the image
    processor, the tokenizer, the chat template) with its video slot left empty: images are
    processed by the model's own code either way."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(str(path))
    except (ImportError, TypeError, AttributeError, ValueError):
        if is_torchvision_available():
            raise
    return _image_only_processor(Path(path))


def _image_only_processor(path: Path):
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    # Where the class is named: processor_config.json (transformers 5), or the image
    # processor's preprocessor_config.json (the released Qwen2-VL / Qwen2.5-VL checkpoints).
    name = None
    for file in ("processor_config.json", "preprocessor_config.json"):
        if name is None and (path / file).is_file():
            name = json.loads((path / file).read_text()).get("processor_class")
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise ProcessorError(f"{path}: no processor could be loaded (processor_class {name!r}; "
                             "torchvision is not installed)")

    class ImageOnly(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None  # the slot torchvision would fill; images never use it
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, **kwargs):
            """The files it was built from, which `AutoProcessor` loads as `cls`."""
            self.tokenizer.save_pretrained(save_directory)
            self.image_processor.save_pretrained(save_directory)
            (Path(save_directory) / "processor_config.json").write_text(
                json.dumps({"processor_class": cls.__name__}, indent=2) + "\n")
            return [str(save_directory)]

    ImageOnly.__name__ = cls.__name__
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    chat = tokenizer.chat_template
    if (path / "chat_template.jinja").is_file():
        chat = (path / "chat_template.jinja").read_text()
    elif (path / "chat_template.json").is_file():  # the released checkpoints' form
        chat = json.loads((path / "chat_template.json").read_text())["chat_template"]
    kwargs = {"video_processor": None} if "video_processor" in cls.get_attributes() else {}
    return ImageOnly(image_processor=AutoImageProcessor.from_pretrained(str(path)),
                     tokenizer=tokenizer, chat_template=chat, **kwargs)


class PromptEncoder:
    """Prompt ids of a problem (and hint), with or without images.

    Text-only prompts are exactly `data.prompts.encode_prompt`'s. With images the
    processor's chat template places them before the text and `vision(images)` supplies
    the processed images (see module docstring)."""

    def __init__(self, tokenizer: Any, processor: Any = None, *, system: str | None = None,
                 hint_template: str = DEFAULT_HINT_TEMPLATE) -> None:
        self.tokenizer = tokenizer
        self.processor = processor
        self.system = system
        self.hint_template = hint_template

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    def vision(self, images: Sequence[Any], where: str = "prompt") -> VisionInputs | None:
        """The images processed once, for every prompt that shows them; None for none."""
        if not images:
            return None
        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            raise ImageError(f"{where} has {len(images)} image(s) but the model has no vision "
                             "tower (its directory has no image processor): use a "
                             "vision-language model, or data without an images field")
        token = self.image_token
        # One placeholder per image, a newline between: the expansion of each is one run.
        enc = self.processor(text=["\n".join([token] * len(images))], images=list(images),
                             return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        counts = _runs(ids, self.processor.image_token_id)
        if len(counts) != len(images):
            raise ImageError(f"{where}: the processor expanded {len(images)} image(s) into "
                             f"{len(counts)} placeholder runs")
        tensors = {k: v for k, v in enc.items()
                   if k not in TEXT_KEYS and isinstance(v, torch.Tensor)}  # fmt: skip
        return VisionInputs(images=tuple(images), tensors=tensors, token_counts=tuple(counts))

    def text(self, problem: str, hint: str | None, vision: VisionInputs) -> str:
        """The prompt text, placeholders expanded (what the ids tokenise)."""
        n = len(vision.token_counts)
        content = user_content(user_message(problem, hint, self.hint_template), n)
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        parts = text.split(self.image_token)
        if len(parts) != n + 1:
            raise ImageError(f"the chat template wrote {len(parts) - 1} image placeholders "
                             f"for {n} image(s)")
        out = parts[0]
        for count, part in zip(vision.token_counts, parts[1:]):
            out += self.image_token * count + part
        return out

    def encode(self, problem: str, hint: str | None = None,
               vision: VisionInputs | None = None) -> list[int]:
        """Prompt ids; `vision` (from `vision(images)`) puts the images before the text."""
        if vision is None:
            return encode_prompt(self.tokenizer, problem, hint, hint_template=self.hint_template,
                                 system=self.system)
        text = self.text(problem, hint, vision)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def user_content(user: str, n_images: int) -> list[dict[str, str]]:
    """The user turn as chat-template content: the images where `user` marks them with
    IMAGE_MARKER, else before the text."""
    parts = user.split(IMAGE_MARKER)
    if len(parts) == 1:
        return [{"type": "image"}] * n_images + [{"type": "text", "text": user}]
    if len(parts) != n_images + 1:
        raise ImageError(f"the problem marks {len(parts) - 1} {IMAGE_MARKER} places for "
                         f"{n_images} image(s): {user[:80]!r}")
    content = []
    for i, part in enumerate(parts):
        if part.strip():
            content.append({"type": "text", "text": part.strip()})
        if i < n_images:
            content.append({"type": "image"})
    return content


def _runs(ids: Sequence[int], token_id: int) -> list[int]:
    """Lengths of the maximal runs of `token_id` in `ids`."""
    runs, n = [], 0
    for t in ids:
        if t == token_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    return runs
