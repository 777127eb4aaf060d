"""A scripted sampler and scorer for the guidance tests (tests/test_guided_round.py,
tests/test_guidance_modes.py): every guidance mode runs on them as on the trainer's engine
and verifier, with answers chosen by the test."""

from __future__ import annotations

from rgpo_fast.data.prompts import encode_prompt
from rgpo_fast.guided_round import Callbacks, PromptGroup
from rgpo_fast.rollout.base import Completion, RequestOutput, SamplingParams

# A worked rationale of five lines (four steps and the answer): the guidance tests' hints.
RAT = "12+17=29\n29*3=87\n87-19=68\n68+5=73\nAnswer: 73"


class ScriptedSampler:
    """Answers each prompt from a script: the texts of the first key found in the decoded
    prompt (a list of k texts, or one list per call of that prompt); records every call."""

    def __init__(self, tok, answers: dict[str, list]):
        self.tok, self.answers = tok, answers
        self.prompts: list[list[list[int]]] = []  # per call, the prompts asked
        self.offsets: list[int] = []  # per call, the seed offset
        self.vision: list[list] = []  # per call, each prompt's images (None: text)
        self._calls: dict[str, int] = {}

    def __call__(self, prompts, k, seed_offset=0, vision=None):
        self.prompts.append([list(p) for p in prompts])
        self.offsets.append(seed_offset)
        self.vision.append(list(vision) if vision is not None else [None] * len(prompts))
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            key = next(key for key in self.answers if key in text)
            texts = self.answers[key]
            if texts and isinstance(texts[0], list):  # one script per call of this prompt
                texts = texts[min(self._calls.get(key, 0), len(texts) - 1)]
                self._calls[key] = self._calls.get(key, 0) + 1
            assert len(texts) == k, (key, texts, k)
            out.append([Completion(self.tok(t, add_special_tokens=False)["input_ids"],
                                   [-0.5] * len(t)) for t in texts])  # fmt: skip
        return out


def exact_score(groups, samples):
    """1.0 where a sample's text ends with its group's answer."""
    return [[1.0 if s.text.strip().endswith(g.answer) else 0.0 for s in row]
            for g, row in zip(groups, samples)]  # fmt: skip


def prompt_groups(tok, problems, answers, rationales, rewards) -> list[PromptGroup]:
    return [PromptGroup(uid=f"u{i}", rationale=r, prompt_ids=encode_prompt(tok, p),
                        rewards=list(rw), group=i, problem=p, answer=a)
            for i, (p, a, r, rw) in enumerate(zip(problems, answers, rationales, rewards))]


def callbacks(tok, sampler, cfg, group_size=4, max_prompt_len=None, hinted_prompt=None,
              score=exact_score) -> Callbacks:  # fmt: skip
    def hinted(group, hint):
        return encode_prompt(tok, group.problem, hint, hint_template=cfg.hint_template)

    return Callbacks(tokenizer=tok, group_size=group_size,
                     hinted_prompt=hinted_prompt or hinted, generate=sampler, score=score,
                     max_prompt_len=max_prompt_len)  # fmt: skip


class ScriptedEngine:
    """A RolloutEngine that answers from a script (ScriptedSampler's: per problem, and per
    call of that problem when the script lists one reply list per call); records
    (prompts, n, seed) of every call."""

    name = "scripted"

    def __init__(self, tok, script):
        self.tok, self.calls = tok, []
        self.sampler = ScriptedSampler(tok, script)

    def generate(self, prompts, params: SamplingParams, vision=None):
        self.calls.append((len(prompts), params.n, params.seed))
        out = self.sampler(prompts, params.n, vision=vision)
        return [RequestOutput(prompt_ids=list(p), completions=c) for p, c in zip(prompts, out)]

    def sleep(self, level=2):
        pass
