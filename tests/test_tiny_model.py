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
    one = [tok(c, add_special_tokens=False)["input_ids"] for c in CHARS]  # byte-level vocab
    assert all(len(i) == 1 and i[0] != tok.unk_token_id for i in one)
    assert len({i[0] for i in one}) == len(CHARS)
    chat = tok.apply_chat_template([{"role": "user", "content": "1+1=?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\n1+1=?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.decode([tok.eos_token_id, *ids[:3]], skip_special_tokens=True) == text[:3]


def test_plain_auto_classes_load_the_same_tokenizer(tmp_path):
    """TRL and vLLM load a model directory with AutoTokenizer / AutoModelForCausalLM alone:
    they must get the project's ids (a byte-level reload once scored 0.02 instead of 0.27)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = ensure_tiny_model(SPEC, tmp_path)
    _, ours = load_model_and_tokenizer(d)
    auto = AutoTokenizer.from_pretrained(str(d))
    text = "3*7=21 | 5 2 21\n5+2=7\n\nAnswer: 28 ~{}|\\`'\"\n\n\n"
    chat = [{"role": "user", "content": text}]
    assert auto(text)["input_ids"] == ours(text)["input_ids"]
    assert len(auto(text, add_special_tokens=False)["input_ids"]) == len(text)
    assert auto.decode(auto(text)["input_ids"]) == text
    for gen in (True, False):
        assert (auto.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True)
                == ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True))
    assert (auto.eos_token_id, auto.pad_token_id) == (ours.eos_token_id, ours.pad_token_id)
    assert AutoModelForCausalLM.from_pretrained(str(d)).config.vocab_size == len(auto)


def test_old_generic_tokenizer_directories_still_load(tmp_path):
    """A directory written with the former generic tokenizer (WordLevel, not byte-level)
    still gets its own ids through the project's loader."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from rgpo_fast.trainer.tiny_model import (
        IM_END,
        PAD_TOKEN,
        SPECIAL_TOKENS,
        UNK_TOKEN,
        _load_tokenizer,
    )

    d = ensure_tiny_model(SPEC, tmp_path)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "config.json").write_text((d / "config.json").read_text())
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + [UNK_TOKEN] + CHARS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN,
                            eos_token=IM_END).save_pretrained(old_dir)
    assert json.loads((old_dir / "tokenizer_config.json").read_text())["tokenizer_class"] in (
        "TokenizersBackend", "PreTrainedTokenizerFast")
    _, ours = load_model_and_tokenizer(d)
    text = "1 2\n3"
    assert _load_tokenizer(old_dir, AutoTokenizer)(text)["input_ids"] == ours(text)["input_ids"]
