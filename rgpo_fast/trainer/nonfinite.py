"""Non-finite values never reach the weights, a checkpoint or an export.

A NaN or inf loss or gradient norm (a learning rate far too high, a reward or data problem)
would otherwise be applied by AdamW, turn every weight into NaN, and be checkpointed: the
run then evaluates to 0 and dies later somewhere unrelated (sampling from NaN logits). So:

- every optimizer step is checked first (`NonFiniteGuard.admit`): loss and gradient norm
  are global values (summed over micro-batches and ranks), so every rank takes the same
  decision. By default a non-finite value stops the run with one `error:` line naming the
  phase and the step; with `train.max_nonfinite_skips` N > 0 up to N updates of the run
  are dropped instead (gradients zeroed, the optimizer's state untouched) and counted, and
  the next one stops it: a run that keeps producing NaN has diverged, and skipping cannot
  rescue it;
- the weights themselves are checked before every checkpoint and HF export
  (`check_finite_weights`): an update can overflow with finite gradients. Nothing is
  written then, so the newest checkpoint on disk stays the last good one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rgpo_fast.errors import NonFiniteError
from rgpo_fast.trainer.distributed import DistInfo, all_reduce_sum


@dataclass
class NonFiniteGuard:
    """The check before one phase's optimizer steps. `phase` names it in messages ("SFT
    warm start", "RL"); `advice` says which option to change; `skipped` counts the run's
    dropped updates (a later phase starts from the earlier phases' count), at most
    `max_skips`."""

    phase: str
    advice: str
    max_skips: int = 0
    skipped: int = 0

    def admit(self, step: int, loss: float, grad_norm: float) -> bool:
        """True: apply the update. False: drop it (within `max_skips`). Raises
        NonFiniteError."""
        bad = [f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
               if not math.isfinite(value)]  # fmt: skip
        if not bad:
            return True
        if self.skipped < self.max_skips:
            self.skipped += 1
            return False
        allowance = (f"{self.max_skips} non-finite updates were already dropped "
                     f"(train.max_nonfinite_skips); " if self.max_skips else "")
        raise NonFiniteError(
            f"non-finite {' and '.join(bad)} in the {self.phase} at step {step}: "
            f"{allowance}the update was not applied and no checkpoint holds it. "
            f"{self.advice}" + ("" if self.max_skips else
                                "; or set --train.max_nonfinite_skips N to drop up to N "
                                "such updates and count them"))


def nonfinite_weights(model: torch.nn.Module, info: DistInfo) -> list[str]:
    """Names of parameters holding a NaN or inf (every rank gets the same list: a sharded
    parameter is checked on each rank's shard and the verdicts summed)."""
    names, flags = [], []
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: this rank's shard
        names.append(name)
        flags.append((~torch.isfinite(local.detach())).any())
    if not flags:
        return []
    bad = all_reduce_sum(torch.stack(flags).to(torch.float64).cpu(), info)
    return [n for n, b in zip(names, bad.tolist()) if b > 0]


def check_finite_weights(model: torch.nn.Module, info: DistInfo, when: str) -> None:
    """Raise NonFiniteError if the weights hold NaN or inf; `when` says where the run is
    ("before checkpoint 3")."""
    bad = nonfinite_weights(model, info)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteError(
            f"the weights hold non-finite values {when} ({', '.join(bad[:3])}{more}): nothing "
            "more was written, the newest checkpoint on disk is the last good one. Lower the "
            "learning rate (optim.lr, train.sft_lr)")
