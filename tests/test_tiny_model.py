"""The tiny Qwen2 + character tokenizer: built once, cached, loaded through from_pretrained."""

from rgpo_fast.trainer.tiny_model import (
    CHARS,
    TinyModelSpec,
    ensure_tiny_model,
    load_model_and_tokenizer,
)

SPEC = TinyModelSpec(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                     num_key_value_heads=1, intermediate_size=64)


def test_build_cache_and_load(tmp_path):
    d = ensure_tiny_model(SPEC, tmp_path)
    mtime = (d / "config.json").stat().st_mtime_ns
    assert ensure_tiny_model(SPEC, tmp_path) == d  # cached: same dir, not rebuilt
    assert (d / "config.json").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    model, tok = load_model_and_tokenizer(d)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tok)
    other = ensure_tiny_model(TinyModelSpec(num_hidden_layers=2, hidden_size=32,
                                            num_attention_heads=2, num_key_value_heads=1,
                                            intermediate_size=64), tmp_path)
    assert other != d  # cache key follows the spec


def test_character_tokenizer_round_trip(tmp_path):
    _, tok = load_model_and_tokenizer(ensure_tiny_model(SPEC, tmp_path))
    text = "(12+17)*3-19=?\n12+17=29\n\nAnswer: 68\n\n\n"  # newline runs too
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, spaces and newlines kept
    assert tok.decode(ids) == text
    assert set(CHARS) <= set(tok.get_vocab())
    chat = tok.apply_chat_template([{"role": "user", "content": "1+1=?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.decode([tok.eos_token_id, *ids[:3]], skip_special_tokens=True) == text[:3]
