"""Chat-template-aware prompt building. The hint, when placed in the prompt, goes into the
user message (through `hint_template`), so chat models see it as part of the question and
it is never a response token (no loss)."""

from __future__ import annotations

from typing import Any

DEFAULT_HINT_TEMPLATE = "{problem}\n\nPartial solution:\n{hint}"
# Used when the tokenizer has no chat template (tiny character-level models): the
# response starts on the line after the question.
DEFAULT_PLAIN_TEMPLATE = "{user}\n"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def user_message(
    problem: str, hint: str | None = None, hint_template: str = DEFAULT_HINT_TEMPLATE
) -> str:
    """The user turn: the problem, or the problem with the hint through `hint_template`."""
    if not isinstance(problem, str):
        raise TypeError(f"problem must be str, got {type(problem).__name__}")
    if not hint:
        return problem
    if "{problem}" not in hint_template or "{hint}" not in hint_template:
        raise ValueError("hint_template must contain {problem} and {hint}")
    return hint_template.format(problem=problem, hint=hint.rstrip())


def build_prompt(
    tokenizer: Any,
    problem: str,
    hint: str | None = None,
    *,
    hint_template: str = DEFAULT_HINT_TEMPLATE,
    system: str | None = None,
    plain_template: str = DEFAULT_PLAIN_TEMPLATE,
) -> str:
    """Prompt text for `problem` (with an optional hint in the user message).

    With a chat template: `apply_chat_template(..., add_generation_prompt=True)`; without
    one (or tokenizer=None): `plain_template` with {user} (and {system} if it uses it).
    """
    user = user_message(problem, hint, hint_template)
    if tokenizer is not None and has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if "{user}" not in plain_template:
        raise ValueError("plain_template must contain {user}")
    fmt = {"user": user}
    if "{system}" in plain_template:
        fmt["system"] = system or ""
    return plain_template.format(**fmt)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (chat templates already add them)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(
    tokenizer: Any, problem: str, hint: str | None = None, **kwargs: Any
) -> list[int]:
    """`build_prompt` then tokenise. Plain prompts get the BOS token if the tokenizer has one
    and would add it (chat templates write their own)."""
    text = build_prompt(tokenizer, problem, hint, **kwargs)
    ids = encode_text(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if (
        not has_chat_template(tokenizer)
        and bos is not None
        and getattr(tokenizer, "add_bos_token", False)
    ):
        ids = [bos, *ids]
    return ids


def token_starts(tokenizer: Any):
    """A function text -> the character offset where each token starts (None when the
    tokenizer gives no offsets, e.g. a slow one), for `segment_rationale`'s token chunks."""
    if tokenizer is None:
        return None

    def starts(text: str) -> list[int] | None:
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, KeyError, ValueError):
            return None
        return [int(a) for a, _ in enc["offset_mapping"]]

    return starts
