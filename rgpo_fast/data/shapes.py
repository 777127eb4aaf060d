"""`shapes`: the built-in visual task (images drawn with Pillow, no download).

`countdown` (rgpo_fast/data/countdown.py) with one number shown only through an image. The
image holds a few shapes (squares and circles, of varied size, place and shade) of one
colour, and a colour is worth a number (red 2, green 3, blue 4: a convention the warm start
teaches, as a board game's chips are worth what the rules say); the problem writes `x` for
the number the image is worth:

    image:     shapes, all blue                problem:   5 x 3 -> 23
    rationale: blue=4 | 5 4 3                  answer:    5 4 3 -> 23
               5*4=20 | 3 20
               20+3=23 | 23

The first rationale line is the visual step (read the colour off the image, write its
value and the pool it completes); the others are countdown's steps, any valid solution
counting. The text alone does not say what x is (three values are possible), so a solution
needs the image; a partial rationale gives the read and the first steps, and leaves the
rest of the search to the model. The reward `shapes` (rewards/verifiers.py) checks the
steps as `countdown` does, after the read line.

Why this shape: what a tiny vision-language model trained for minutes on two CPU cores can
learn to see, in front of the search that makes RL and partial hints matter (docs/learning.md
says why countdown). A colour is read from any of the image's tokens within a hundred
steps, while reading what a particular cell holds needs attention by position, which M-RoPE
gives the image's columns through the slowest rotary frequencies of a head, and is learned
slowly, the more slowly the more cells (`python benchmarks/vl_reading.py`;
docs/learning.md). The shapes' number, kind, size and shade vary, so the model has to read
colour, not match pixels. Splits follow countdown: `easy` = 3 numbers, `hard` = 4
numbers with a single good first step, `mixed` = both, `warm` = 2-5 numbers for the SFT
warm start. Held-out problems are separated from training ones by a hash of the problem
text and the colour (not by seed).

The values are fixed, not given in the prompt: with a table in the text ("red=4 green=6
blue=2", values drawn per problem) the 2-layer model also had to learn an in-context lookup,
and its warm start solved half as many easy problems in the same budget (pilot runs,
docs/learning.md).
"""

from __future__ import annotations

import random
import re

from rgpo_fast.data import countdown
from rgpo_fast.data.generated import check_count, problem_hash, sample_examples
from rgpo_fast.data.types import Example

CELL = 28  # pixels per grid cell: one image token of the tiny Qwen2-VL
SIDE = 3  # cells per image side: 84 pixels, 9 image tokens
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
VALUES = {"red": 2, "green": 3, "blue": 4}  # what the shapes of a colour are worth
SPLITS = countdown.SPLITS
LEVELS = tuple(countdown.LEVELS)
MIN_SHAPES = 2
EMPTY_PROB = 0.4
# The read line: "blue=2", optionally followed by "| the pool" (a note, as in countdown).
_READ = re.compile(r"^\s*(red|green|blue)\s*=\s*\d+\s*(?:\|[^\n]*)?$")


def shapes_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's steps, after its read line, solve the countdown problem
    `answer` ('3 2 7 -> 24', x resolved)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    lines = completion.strip().splitlines()
    if lines and _READ.match(lines[0]):
        lines = lines[1:]
    return countdown.countdown_reward("\n".join(lines), answer)


def draw_shapes(cells: list[list[tuple | None]], colour: tuple[int, int, int]):
    """The image of a grid of cells: None is empty, else (shape, margin, dx, dy, shade) of
    the cell's square or circle, in `colour` lightened or darkened by `shade`; white
    background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (len(cells[0]) * CELL, len(cells) * CELL), (255, 255, 255))
    pen = ImageDraw.Draw(img)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            shape, margin, dx, dy, shade = cell
            box = (c * CELL + margin + dx, r * CELL + margin + dy,
                   (c + 1) * CELL - margin + dx, (r + 1) * CELL - margin + dy)  # fmt: skip
            fill = tuple(max(0, min(255, v + shade)) for v in colour)
            (pen.rectangle if shape == "square" else pen.ellipse)(box, fill=fill)
    return img


def _cells(rng: random.Random) -> list[list[tuple | None]]:
    while True:
        cells = [[None if rng.random() < EMPTY_PROB else
                  (rng.choice(("square", "circle")), rng.randint(4, 7), rng.randint(-2, 2),
                   rng.randint(-2, 2), rng.randint(-30, 30)) for _ in range(SIDE)]
                 for _ in range(SIDE)]  # fmt: skip
        if sum(cell is not None for row in cells for cell in row) >= MIN_SHAPES:
            return cells


def _draw_example(rng: random.Random, level: str) -> Example | None:
    spec = countdown.LEVELS[level]
    drawn = countdown._one_problem(rng, spec)
    if drawn is None:
        return None
    numbers, target, lines = drawn
    cap = spec.max_good_first_steps
    if cap is not None and countdown.good_first_steps(numbers, target) > cap:
        return None
    worth = {v: c for c, v in VALUES.items()}
    can_hide = [i for i, v in enumerate(numbers) if v in worth]
    if not can_hide:
        return None
    hidden = rng.choice(can_hide)
    x = numbers[hidden]
    colour = worth[x]
    shown = ["x" if i == hidden else str(v) for i, v in enumerate(numbers)]
    problem = " ".join(shown) + f" -> {target}"
    read = f"{colour}={x} | " + " ".join(map(str, numbers))
    key = f"{problem}|{colour}"
    return Example(problem=problem, rationale="\n".join([read, *lines]),
                   answer=countdown.problem_text(numbers, target),
                   uid=f"shapes-{problem_hash(key):012x}",
                   images=(draw_shapes(_cells(rng), COLOURS[colour]),),
                   meta={"task": "shapes", "level": level, "colour": colour, "key": key})


def make_shapes(seed: int = 0, n: int = 256, split: str = "easy", *,
                heldout: bool = False) -> list[Example]:  # fmt: skip
    """`n` shapes problems of `split` (countdown's splits and levels), from the training
    partition or (`heldout`) the disjoint evaluation one. Same arguments, same list (images
    included)."""
    check_count(n)
    return sample_examples("shapes", seed, n, countdown._levels_of(split), heldout,
                           _draw_example, key=lambda ex: ex.meta["key"])
