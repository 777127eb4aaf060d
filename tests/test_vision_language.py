"""Vision-language RGPO on the tiny Qwen2-VL: the processor saved beside the model, prompts
with images, generation from images, the policy forward's log-probs of the same tokens,
the guided round keeping the images, and bad image input."""

import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from rgpo_fast.data.multimodal import (
    ImageError,
    PromptEncoder,
    collate_vision,
    load_images,
    load_processor,
)
from rgpo_fast.data.readers import load_examples
from rgpo_fast.data.shapes import make_shapes
from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.rollout.hf import HFEngine
from rgpo_fast.trainer.policy import PolicyModule
from rgpo_fast.trainer.tiny_model import load_model_and_tokenizer
from rgpo_fast.trainer.tiny_vl_model import IMAGE_PAD, TinyVLSpec, ensure_tiny_vl_model

# fp32 on CPU: the engine's log-probs (incremental decoding with a KV cache) and the policy
# forward's (one pass over prompt + response) differ by summation order only.
LOGPROB_ATOL = 1e-5


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory) -> Path:
    spec = TinyVLSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, vision_depth=1,
                      vision_embed_dim=32, vision_heads=2)
    return ensure_tiny_vl_model(spec, tmp_path_factory.mktemp("vl_cache"))


@pytest.fixture(scope="module")
def vl(vl_dir):
    model, tok = load_model_and_tokenizer(vl_dir)
    return model, tok, load_processor(vl_dir)


def _grid(colour, side=84):
    return Image.new("RGB", (side, side), colour)


def test_processor_round_trip_and_prompt_ids(vl, tmp_path):
    model, tok, proc = vl
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(proc).__name__ == "Qwen2VLProcessor"
    enc = PromptEncoder(tok, proc, system="Count.")
    images = [_grid((255, 0, 0)), _grid((0, 0, 255), 112)]
    vision = enc.vision(images)
    assert vision.token_counts == (9, 16)  # 28-pixel cells: one token each
    ids = enc.encode("How many red shapes?", "R.. 1", vision)
    # The processor's own path (template + images in one call) gives the same ids/pixels.
    messages = [{"role": "system", "content": "Count."},
                {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": enc.text(
                                                 "How many red shapes?", "R.. 1", vision
                                             ).split("<|vision_end|>")[-1].split("<|im_end|>")[0]}]}]
    ref = proc(text=[proc.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=True)],
               images=images, return_tensors="pt")
    assert ref["input_ids"][0].tolist() == ids
    assert torch.equal(ref["pixel_values"], vision.tensors["pixel_values"])
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_PAD)) == 25
    # Saved and loaded back: the same processor.
    proc.save_pretrained(tmp_path)
    again = PromptEncoder(tok, load_processor(tmp_path), system="Count.")
    assert again.encode("How many red shapes?", "R.. 1", again.vision(images)) == ids
    # Text prompts are the text encoder's.
    from rgpo_fast.data.prompts import encode_prompt

    assert enc.encode("2+2") == encode_prompt(tok, "2+2", system="Count.")


def _rows(prompts, outs, vision):
    return [(p, c, v) for p, o, v in zip(prompts, outs, vision) for c in o.completions]


def _policy_logprobs(model, tok, rows, impl="torch"):
    L = max(len(p) + len(c.token_ids) for p, c, _ in rows)
    ids = torch.full((len(rows), L), tok.pad_token_id)
    attn = torch.zeros_like(ids)
    for b, (p, c, _) in enumerate(rows):
        seq = p + c.token_ids
        ids[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
    lens = torch.tensor([len(p) for p, _, _ in rows])
    with torch.no_grad():
        return PolicyModule(model, impl=impl)(ids, attn, None, mode="logprobs",
                                              vision=collate_vision([v for *_, v in rows]),
                                              prompt_lens=lens)


def test_engine_generates_from_images_and_the_policy_agrees(vl):
    model, tok, proc = vl
    enc = PromptEncoder(tok, proc)
    red, blue = enc.vision([_grid((255, 0, 0))]), enc.vision([_grid((0, 0, 255), 112)])
    vision = [red, blue, None]  # a 3x3 image, a 4x4 one with a hint, a text prompt
    prompts = [enc.encode("How many red shapes?", None, red),
               enc.encode("How many blue shapes?", "B.BB 3", blue), enc.encode("1+1")]
    engine = HFEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    params = SamplingParams(n=3, max_new_tokens=8, seed=0)
    outs = engine.generate(prompts, params, vision=vision)
    rows = _rows(prompts, outs, vision)
    lp = _policy_logprobs(model, tok, rows)
    for b, (p, c, _) in enumerate(rows):
        mine = lp[b, len(p) - 1 : len(p) - 1 + len(c.token_ids)]
        torch.testing.assert_close(mine, torch.tensor(c.logprobs), atol=LOGPROB_ATOL, rtol=0)
    # The image is read: another image under the same prompt ids changes the distribution.
    green = enc.vision([_grid((0, 200, 0))])
    first = [(prompts[0], c, green) for c in outs[0].completions]
    other = _policy_logprobs(model, tok, first)
    n = len(prompts[0]) + len(outs[0].completions[0].token_ids) - 1
    assert (other[0, :n] - lp[0, :n]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="vision has 1 entries for 3 prompts"):
        engine.generate(prompts, params, vision=[red])


def test_a_sampled_placeholder_is_an_ordinary_response_token(vl):
    """A response holding the image placeholder id (a random model samples it) gets no image
    features: only the prompt's placeholders do, in the engine and the policy alike."""
    from rgpo_fast.rollout.base import Completion

    model, tok, proc = vl
    enc = PromptEncoder(tok, proc)
    red = enc.vision([_grid((255, 0, 0))])
    prompt = enc.encode("How many red shapes?", None, red)
    pad = tok.convert_tokens_to_ids(IMAGE_PAD)
    response = [tok.convert_tokens_to_ids("R"), pad, pad, tok.eos_token_id]
    rows = [(prompt, Completion(response, None), red)]
    lp = _policy_logprobs(model, tok, rows)
    assert torch.isfinite(lp[0, len(prompt) - 1 : len(prompt) + 3]).all()


def test_guided_round_keeps_the_images(vl):
    """RGPO through the trainer's collection with a scripted engine: the hinted prompts are
    sampled with their group's images, and every trained sample (transferred ones too)
    carries them."""
    from scripted import ScriptedEngine

    from rgpo_fast.algos.guidance import HintLevels
    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.batch import assemble_batch
    from rgpo_fast.rewards.contract import checked_reward
    from rgpo_fast.trainer.collect import CollectContext, collect

    model, tok, proc = vl
    ex = make_shapes(0, 2, "easy")
    algo = get_preset("rgpo", hint_placement="prompt")
    wrong = ["1+1=2 | 2"] * 2
    right = [ex[0].rationale]  # the preset samples one guided solution
    # Unguided: every sample wrong. Guided (the hint is in the prompt): one right.
    engine = ScriptedEngine(tok, {"Partial solution": right, "->": wrong})
    ctx = CollectContext(engine=engine, tokenizer=tok, algo=algo,
                         reward_fn=checked_reward("shapes"),
                         sampling=SamplingParams(n=2, max_new_tokens=8), processor=proc)
    out = collect(ctx, ex[:1], HintLevels(), seed=0)
    unguided, guided = engine.sampler.vision
    assert unguided[0] is not None and guided[0] is unguided[0]  # processed once, reused
    kinds = {s.kind for s in out.samples}
    assert "transferred" in kinds
    assert all(s.vision is unguided[0] for s in out.samples)
    batch = assemble_batch(out.samples, algo, pad_token_id=tok.pad_token_id)
    inputs = batch.select([0]).model_inputs()
    assert inputs["vision"].tensors["pixel_values"].shape[0] == 36  # one 84-pixel image


def test_images_column_paths_bytes_and_errors(tmp_path):
    img = _grid((255, 0, 0))
    img.save(tmp_path / "a.png")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rows = [{"problem": "p", "answer": "1", "images": ["a.png"]},
            {"problem": "q", "answer": "2", "images": {"bytes": buf.getvalue(), "path": None}},
            {"problem": "r", "answer": "3"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, default=lambda b: None) + "\n" for r in rows[:1]
                            + rows[2:]))
    examples, _ = load_examples(path, verbose=False)
    assert [len(e.images) for e in examples] == [1, 0]
    assert examples[0].images[0].size == (84, 84)
    assert len(load_images(rows[1]["images"], "row 1")) == 1
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"problem": "p", "answer": "1", "images": "nope.png"}) + "\n")
    with pytest.raises(ImageError, match=r"m.jsonl: row 0: field 'images': image file not found"):
        load_examples(missing, on_error="skip", verbose=False)
    with pytest.raises(ImageError, match="do not decode"):
        load_images(b"not a png", "row 3")
    with pytest.raises(ImageError, match="has no vision tower"):
        PromptEncoder(None).vision([img], "problem x")


def _vl_args(run, cache, *extra):
    from rgpo_fast.trainer.testing import tiny_args

    return tiny_args(run, cache, extra=["--model.tiny", "qwen2-vl", "--data.train", "shapes:easy",
                                        "--data.sft", "shapes:easy", "--data.eval",
                                        "shapes:easy", *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_image_input_is_one_error_line(tmp_path, capsys):
    from rgpo_fast.train import main

    cache = tmp_path / "cache"
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"problem": "How many red shapes?", "answer": "1",
                                "rationale": "R 1\nAnswer: 1", "images": ["lost.png"]}) + "\n")
    run = tmp_path / "run"
    assert main(_vl_args(run, cache, "--data.train", str(data))) == 2
    assert "image file not found" in _error_line(capsys) and not (run / "checkpoints").exists()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    data.write_text(json.dumps({"problem": "p", "answer": "1", "images": "bad.png"}) + "\n")
    assert main(_vl_args(run, cache, "--data.train", str(data))) == 2
    assert "bad.png is not a readable image" in _error_line(capsys)
    # Images for a model without a vision tower: refused before any training.
    from rgpo_fast.trainer.testing import tiny_args

    text_run = tmp_path / "text_run"
    args = tiny_args(text_run, cache, extra=["--data.train", "shapes:easy"])
    assert main(args) == 2
    line = _error_line(capsys)
    assert "has no vision tower" in line and "--model.tiny qwen2-vl" in line
    assert not (text_run / "checkpoints").exists()


def test_run_exports_a_vision_language_model_and_resumes_exactly(tmp_path):
    """A short VL run writes final/ (loadable as an image-text-to-text model with its
    processor); resuming from step 2 retrains step 3 to the same weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from rgpo_fast.train import main

    run, cache = tmp_path / "run", tmp_path / "cache"
    args = _vl_args(run, cache, "--train.save_every", "1", "--train.keep_checkpoints", "3",
                    "--logging.plots", "false")
    args[args.index("--max-steps") + 1] = "3"
    assert main(args) == 0
    first = load_file(run / "final" / "model.safetensors")
    model = AutoModelForImageTextToText.from_pretrained(run / "final")
    proc = load_processor(run / "final")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    ex = make_shapes(0, 1, "easy")[0]
    enc = PromptEncoder(proc.tokenizer, proc)
    vision = enc.vision(ex.images)
    engine = HFEngine(model, eos_token_ids=[proc.tokenizer.eos_token_id],
                      pad_token_id=proc.tokenizer.pad_token_id)
    out = engine.generate([enc.encode(ex.problem, vision=vision)],
                          SamplingParams(max_new_tokens=4, temperature=0.0), vision=[vision])
    assert len(out[0].completions[0].token_ids) >= 1
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000003")
    assert main(args + ["--resume"]) == 0
    again = load_file(run / "final" / "model.safetensors")
    assert first.keys() == again.keys()
    for name in first:
        assert torch.equal(first[name], again[name]), name


@pytest.mark.parametrize("preset", ["grpo", "dapo", "ghpo", "luffy", "guide", "rgpo"])
def test_every_guidance_mode_trains_on_images(tmp_path, preset):
    """Two RL steps of each guidance mode on the visual task: GHPO's hinted prompts, LUFFY's
    reference slot and Guide's guided rows all go through the vision-language forward."""
    from rgpo_fast.train import main

    run = tmp_path / "run"
    # Guide transfers by importance sampling: its hint tokens stay masked (the default run's
    # `trained` needs an sft transfer).
    masked = ["--algo.transferred_hint", "masked"] if preset == "guide" else []
    args = _vl_args(run, tmp_path / "cache", "--algo.name", preset, "--logging.plots", "false",
                    "--eval.every", "0", *masked)
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/total" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss/total"]) for r in steps)


def test_image_markers_place_the_images(vl):
    _, tok, proc = vl
    enc = PromptEncoder(tok, proc)
    vision = enc.vision([_grid((255, 0, 0))])
    text = enc.text("<image>Find x in the triangle.", None, vision)
    assert "<image>" not in text and text.index("<|vision_start|>") < text.index("Find x")
    inline = enc.text("In the figure <image> find x.", None, vision)
    assert inline.index("In the figure") < inline.index("<|vision_start|>") < inline.index("find")
    with pytest.raises(ImageError, match="marks 2 <image> places for 1 image"):
        enc.encode("<image> and <image>", None, vision)


def test_vision_options_a_text_model_cannot_use_are_refused(tmp_path, capsys):
    from rgpo_fast.train import main
    from rgpo_fast.trainer.testing import tiny_args

    assert main(tiny_args(tmp_path / "a", tmp_path / "cache",
                          extra=["--model.freeze_vision", "false"])) == 2
    assert "has no vision tower to train" in _error_line(capsys)
    assert main(tiny_args(tmp_path / "b", tmp_path / "cache",
                          extra=["--model.tiny", "qwen2-vl", "--model.path", str(tmp_path)])) == 2
    assert "leave one of them out" in _error_line(capsys)


def test_images_in_every_data_format(tmp_path):
    """The images column in Parquet (a datasets Image feature's bytes), CSV (a path, or a
    JSON list of paths) and a save_to_disk dataset (decoded images), with renamed columns."""
    import datasets
    import pandas as pd

    from rgpo_fast.data.readers import FieldMap

    img = _grid((0, 170, 60))
    img.save(tmp_path / "g.png")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    fields = FieldMap(problem="question", answer="label", rationale=None, images="image")
    pd.DataFrame({"question": ["q1"], "label": ["1"],
                  "image": [{"bytes": buf.getvalue(), "path": None}]}).to_parquet(
        tmp_path / "d.parquet")
    pd.DataFrame({"question": ["q1", "q2"], "label": ["1", "2"],
                  "image": ["g.png", '["g.png", "g.png"]']}).to_csv(tmp_path / "d.csv",
                                                                      index=False)
    datasets.Dataset.from_dict({"question": ["q1"], "label": ["1"], "image": [img]}).cast_column(
        "image", datasets.Image()).save_to_disk(str(tmp_path / "arrow"))
    for name, counts in (("d.parquet", [1]), ("d.csv", [1, 2]), ("arrow", [1])):
        examples, _ = load_examples(tmp_path / name, fields, verbose=False)
        assert [len(e.images) for e in examples] == counts, name
        assert all(im.mode == "RGB" and im.getpixel((0, 0)) == (0, 170, 60)
                   for e in examples for im in e.images), name


def test_processor_of_the_released_checkpoints_layout(vl_dir, vl, tmp_path):
    """Released Qwen2-VL / Qwen2.5-VL directories name the processor class in
    preprocessor_config.json and keep the chat template in chat_template.json: the
    processor loads from that layout too (and without torchvision)."""
    import shutil

    _, tok, proc = vl
    d = tmp_path / "released"
    shutil.copytree(vl_dir, d)
    (d / "processor_config.json").unlink()
    pre = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps({**pre,
                                                            "processor_class": "Qwen2VLProcessor"}))
    template = (d / "chat_template.jinja").read_text()
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    again = load_processor(d)
    assert type(again).__name__ == "Qwen2VLProcessor"
    images = [_grid((255, 0, 0))]
    ours, theirs = PromptEncoder(tok, proc), PromptEncoder(tok, again)
    assert ours.encode("1 x -> 3", None, ours.vision(images)) == \
        theirs.encode("1 x -> 3", None, theirs.vision(images))  # fmt: skip


def test_each_distinct_image_is_encoded_once_per_forward(vl):
    """Rows that show the same prompt's images (a group's samples) share one pass of the
    vision tower; their log-probs equal those of each row alone."""
    model, tok, proc = vl
    enc = PromptEncoder(tok, proc)
    red, blue = enc.vision([_grid((255, 0, 0))]), enc.vision([_grid((0, 0, 255), 112)])
    prompts = {id(red): enc.encode("1 x -> 3", None, red),
               id(blue): enc.encode("2 x -> 8", "blue=4 | 2 4", blue)}
    from rgpo_fast.rollout.base import Completion

    rows = [(prompts[id(v)], Completion([30 + i, 40, tok.eos_token_id], None), v)
            for i, v in enumerate([red, blue, red, red])]
    patches = []
    hook = model.model.visual.register_forward_pre_hook(
        lambda mod, args, kwargs=None: patches.append(args[0].shape[0]))
    try:
        together = _policy_logprobs(model, tok, rows)
    finally:
        hook.remove()
    assert patches == [36 + 64]  # red once, blue once: not 3 x 36 + 64
    batch = collate_vision([v for *_, v in rows])
    assert batch.order.tolist() == [0, 1, 0, 0]
    for b, row in enumerate(rows):
        alone = _policy_logprobs(model, tok, [row])
        n = alone.shape[1]
        torch.testing.assert_close(together[b, :n], alone[0], atol=LOGPROB_ATOL, rtol=0)
