"""How the Triton launchers call their kernels: pointer hygiene and the autotuned path.

A fixed-block CPU test never reaches `triton.autotune`, whose pre-hook zeroes every
`reset_to_zero` argument before each timing run and before the real launch. The backward
once passed the saved log-sum-exp as the placeholder of an unwanted dbias; the autotuner
zeroed it and the backward computed p = exp(z) instead of exp(z - lse). These tests record
every launch and check that no pointer a kernel writes or the autotuner zeroes shares
memory with another argument, in every flag combination, through both launch paths; and
they run the autotuned path under the interpreter against the oracle.
"""

import inspect
import itertools
import re

import pytest
import torch
from logprob_oracle import DEV, logprob_inputs, oracle_grads
from tolerance import assert_three_way

from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms
from rgpo_fast.ops.backends import available_backends
from rgpo_fast.ops.truncation import truncation_thresholds

pytestmark = pytest.mark.skipif(
    "triton" not in available_backends(DEV), reason="triton backend unavailable here"
)

if "triton" in available_backends(DEV):
    from rgpo_fast.kernels import linear_logprob as klp
    from rgpo_fast.kernels import policy_loss as kpl

# Pointer arguments each kernel stores to, or that the autotuner zeroes.
WRITTEN = {
    "_logprob_fwd_kernel": {"part_m_ptr", "part_s_ptr", "part_a_ptr", "part_zt_ptr"},
    "_logprob_combine_kernel": {"logp_ptr", "lse_ptr", "ent_ptr"},
    "_logprob_bwd_kernel": {"dh_ptr", "dw_ptr", "db_ptr"},
    "_policy_loss_kernel": {"grad_ptr", "part_ptr"},
}


def _jit(kernel):
    """The JIT function under an autotuner (or the kernel itself)."""
    while hasattr(kernel, "fn") and not hasattr(kernel, "arg_names"):
        kernel = kernel.fn
    return kernel


def test_written_sets_cover_every_store():
    """WRITTEN names real arguments, and every `tl.store` / `tl.atomic_add` straight into a
    pointer argument is listed (a new output cannot slip past the aliasing test)."""
    kernels = [klp._logprob_fwd_kernel, klp._logprob_combine_kernel, klp._logprob_bwd_kernel,
               kpl._policy_loss_kernel]  # fmt: skip
    for k in kernels:
        fn = _jit(k)
        name = fn.__name__
        assert WRITTEN[name] <= set(fn.arg_names), name
        src = inspect.getsource(fn.fn)
        stored = set(re.findall(r"tl\.(?:store|atomic_add)\(\s*(\w+_ptr)", src))
        assert stored and stored <= WRITTEN[name], (name, stored - WRITTEN[name])
    assert set(klp.BWD_RESET_TO_ZERO) <= WRITTEN["_logprob_bwd_kernel"]


@pytest.fixture
def launches(monkeypatch):
    """Record (kernel name, {argument name: value}) of every kernel launch."""
    seen = []
    cls = type(_jit(klp._logprob_fwd_kernel))
    real = cls.run

    def run(self, *args, **kwargs):
        named = dict(zip(self.arg_names, args))
        named.update({k: v for k, v in kwargs.items() if k in self.arg_names})
        seen.append((self.__name__, named))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "run", run)
    return seen


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, last byte + 1) that a (possibly strided) tensor's elements occupy."""
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()) if n > 0)
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _assert_no_alias(seen):
    assert seen, "no kernel launch was recorded"
    for name, named in seen:
        tensors = {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}
        for out in WRITTEN[name]:
            a0, a1 = _span(tensors[out])
            for other, t in tensors.items():
                if other == out:
                    continue
                b0, b1 = _span(t)
                assert a1 <= b0 or b1 <= a0, f"{name}: {out} shares memory with {other}"


PATHS = {"fixed": {"blocks": {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16, "GROUP_N": 2}}}
if "triton" in available_backends(DEV):
    PATHS["autotuned"] = {"configs": klp.INTERPRET_CONFIGS}


@pytest.mark.parametrize("path", ["fixed", "autotuned"])
def test_logprob_launches_never_alias_outputs(path, launches):
    """Every flag combination of the forward (bias, entropy) and the backward (bias,
    entropy, which gradients), through fixed blocks and through the autotuner."""
    kw = PATHS[path]
    for bias, ent, cut in itertools.product((False, True), repeat=3):
        h, w, b, t = logprob_inputs(9, 16, 40, torch.float32, bias)
        thr = truncation_thresholds(h, w, b, 1.0, 0.8, 0) if cut else None
        logp, lse, entropy = klp.linear_logprob_forward(h, w, b, t, 1.0, ent, threshold=thr,
                                                        **kw)  # fmt: skip
        g = torch.randn(9, device=DEV)
        g_ent = torch.randn(9, device=DEV) if ent else None
        for needs in itertools.product((False, True), repeat=3):
            if any(needs):
                klp.linear_logprob_backward(h, w, b, t, lse, entropy if ent else None, 1.0, g,
                                            g_ent, needs, threshold=thr, **kw)  # fmt: skip
    names = {n for n, _ in launches}
    assert names == {"_logprob_fwd_kernel", "_logprob_combine_kernel", "_logprob_bwd_kernel"}
    _assert_no_alias(launches)


def test_policy_loss_launches_never_alias_outputs(launches):
    n = 50
    g = torch.Generator().manual_seed(0)

    def f32():
        return torch.randn(n, generator=g).to(DEV)

    policy = (torch.rand(n, generator=g) < 0.8).to(DEV)
    for present in itertools.product((False, True), repeat=5):
        off, old, ref, roll, ent = present
        terms = TokenTerms(
            advantages=f32(), pg_weight=f32().abs(), sft_weight=f32().abs(), policy=policy,
            offpolicy=~policy if off else None, old_logprobs=f32() if old else None,
            ref_logprobs=f32() if ref else None, rollout_logprobs=f32() if roll else None,
        )  # fmt: skip
        cfg = LossConfig(beta=0.1 if ref else 0.0)
        kpl.policy_loss_forward_backward(f32(), terms, cfg, f32().abs() if ent else None,
                                         block=32)  # fmt: skip
    _assert_no_alias(launches)


def test_placeholder_alias_is_caught(launches, monkeypatch):
    """The check above fails on the bug it guards against, put back into the real
    launcher: the old backward passed lse as the placeholder of an unwanted gradient."""
    h, w, b, t = logprob_inputs(9, 16, 40, torch.float32, bias=False)
    _, lse, _ = klp.linear_logprob_forward(h, w, b, t, 1.0, False)
    monkeypatch.setattr(klp, "_placeholder", lambda device: lse)  # the old bug
    launches.clear()
    klp.linear_logprob_backward(h, w, b, t, lse, None, 1.0, torch.randn(9, device=DEV), None,
                                (True, True, False), **PATHS["fixed"])  # fmt: skip
    with pytest.raises(AssertionError, match="db_ptr shares memory with (bias|lse)_ptr"):
        _assert_no_alias(launches)


def test_autotuner_keys_on_the_bucket_of_n_and_the_flags():
    """One tuning per (H, V, bucket of N, flags): a 1-token dummy forward does not choose
    the tiles of a 4000-token micro-batch, and a launch with entropy is tuned apart from
    one without; N of the same bucket reuse the choice."""
    tuned = klp._autotuned("fwd", klp.INTERPRET_CONFIGS)
    tuned.cache.clear()
    kw = {"configs": klp.INTERPRET_CONFIGS}

    def launch(n, entropy):
        h, w, b, t = logprob_inputs(n, 16, 40, torch.float32, bias=False)
        klp.linear_logprob_forward(h, w, b, t, 1.0, entropy, **kw)
        return len(tuned.cache)

    assert [launch(9, False), launch(12, False), launch(1, False)] == [1, 1, 1]  # bucket 16
    assert launch(37, False) == 2  # bucket 64
    assert launch(37, True) == 3  # WITH_ENTROPY
    assert [klp.n_bucket(n) for n in (1, 16, 17, 4000)] == [16, 16, 32, 4096]


def _check_three_way(inputs, temperature, g_logp, g_ent, got, dtype):
    """logp, entropy and the three gradients against the float64 oracle, with naive PyTorch
    in the input dtype as the yardstick (tests/tolerance.py)."""
    naive = oracle_grads(*inputs, temperature, g_logp, g_ent, torch.float32, upcast=False)
    truth = oracle_grads(*inputs, temperature, g_logp, g_ent, torch.float64, upcast=True)
    for name, x, xn, xt in zip(["logp", "entropy", "dhidden", "dweight", "dbias"], got, naive,
                               truth):  # fmt: skip
        if xt is None:
            assert x is None, name
            continue
        assert_three_way(name, x, xn, xt, dtype)


@pytest.mark.parametrize(
    "dtype, bias", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)]
)
def test_autotuned_path_matchesoracle_grads(dtype, bias):
    """The launchers through `triton.autotune` (two configs timed, reset_to_zero pre-hooks,
    the final launch) against the float64 oracle. Without a bias, dbias is not wanted: the
    case that zeroed lse before the fix. Shapes are ragged for both configs."""
    N, H, V, temperature = 37, 29, 101, 0.8
    h, w, b, t = logprob_inputs(N, H, V, dtype, bias)
    g_logp = torch.linspace(-1, 1, N, device=DEV)
    g_ent = torch.linspace(0.5, -0.25, N, device=DEV)
    kw = {"configs": klp.INTERPRET_CONFIGS}
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, temperature, True, **kw)
    dh, dw, db = klp.linear_logprob_backward(h, w, b, t, lse, ent, temperature, g_logp, g_ent,
                                             (True, True, bias), **kw)  # fmt: skip
    tuned = klp._autotuned("bwd", klp.INTERPRET_CONFIGS)
    assert tuned.best_config in klp.INTERPRET_CONFIGS  # the autotuner chose, not a fixed block
    _check_three_way((h, w, b, t), temperature, g_logp, g_ent, [logp, ent, dh, dw, db], dtype)


@pytest.mark.parametrize("dtype, top_p, top_k", [(torch.float32, 0.8, 0),
                                                  (torch.float32, 0.9, 12),
                                                  (torch.bfloat16, 0.7, 0)])
def test_autotuned_path_with_a_sampler_threshold_matches_oracle(dtype, top_p, top_k):
    """The truncated sampler's log-probs (THRESHOLD on: the sums and the gradient skip the
    dropped logits) through the autotuner, against the oracle's support written token by
    token; tuned apart from the launches without a threshold."""
    N, H, V, temperature = 37, 29, 101, 0.8
    h, w, b, t = logprob_inputs(N, H, V, dtype, True, scale=1.0)
    g_logp = torch.linspace(-1, 1, N, device=DEV)
    g_ent = torch.linspace(0.5, -0.25, N, device=DEV)
    thr = truncation_thresholds(h, w, b, temperature, top_p, top_k, rounded_logits=False)
    kw = {"configs": klp.INTERPRET_CONFIGS, "threshold": thr}
    tuned = klp._autotuned("fwd", klp.INTERPRET_CONFIGS)
    tuned.cache.clear()
    klp.linear_logprob_forward(h, w, b, t, temperature, True, configs=klp.INTERPRET_CONFIGS)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, temperature, True, **kw)
    assert len(tuned.cache) == 2  # the threshold's launch is tuned apart (TUNE_KEYS)
    dh, dw, db = klp.linear_logprob_backward(h, w, b, t, lse, ent, temperature, g_logp, g_ent,
                                             (True, True, True), **kw)  # fmt: skip
    assert klp._autotuned("bwd", klp.INTERPRET_CONFIGS).best_config in klp.INTERPRET_CONFIGS
    naive = oracle_grads(h, w, b, t, temperature, g_logp, g_ent, torch.float32, False, top_p,
                         top_k)
    truth = oracle_grads(h, w, b, t, temperature, g_logp, g_ent, torch.float64, True, top_p,
                         top_k)
    full = oracle_grads(h, w, b, t, temperature, g_logp, g_ent, torch.float64, True)
    assert (truth[0] - full[0]).abs().max() > 0.05  # the truncation changes the log-probs
    for name, x, xn, xt in zip(["logp", "entropy", "dhidden", "dweight", "dbias"],
                               [logp, ent, dh, dw, db], naive, truth):
        assert_three_way(f"top_p={top_p} top_k={top_k}: {name}", x, xn, xt, dtype)


def test_default_launch_plan(monkeypatch):
    """On a GPU (no interpreter) the default is the autotuner over the dtype's list (fp32
    tiles are smaller: shared memory); under the interpreter fixed blocks; blocks= and
    configs= together are refused."""
    monkeypatch.setattr(klp, "interpreting", lambda: False)
    assert klp._launch_plan(None, None, torch.bfloat16) == (None, klp.GPU_CONFIGS)
    assert klp._launch_plan(None, None, torch.float32) == (None, klp.GPU_CONFIGS_FP32)
    monkeypatch.setattr(klp, "interpreting", lambda: True)
    blk, tune = klp._launch_plan(None, None)
    assert tune is None and blk == klp.interpret_blocks()
    with pytest.raises(ValueError, match="either blocks"):
        klp._launch_plan({"BLOCK_N": 16}, klp.INTERPRET_CONFIGS)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_sampler_threshold_path_matches_oracle(dtype):
    """On a GPU: a top_p = 0.9 sampler's log-probs through the default autotuned launch
    (THRESHOLD on) against the oracle's support, on peaked logits (a small nucleus)."""
    N, H, V, top_p = 300, 256, 5000, 0.9
    h, w, b, t = logprob_inputs(N, H, V, dtype, True, scale=4.0)
    g_logp = torch.randn(N, device=DEV)
    g_ent = torch.randn(N, device=DEV)
    thr = truncation_thresholds(h, w, b, 1.0, top_p, 0, rounded_logits=False)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, 1.0, True, threshold=thr)
    dh, dw, db = klp.linear_logprob_backward(h, w, b, t, lse, ent, 1.0, g_logp, g_ent,
                                             (True, True, True), threshold=thr)  # fmt: skip
    naive = oracle_grads(h, w, b, t, 1.0, g_logp, g_ent, torch.float32, False, top_p, 0)
    truth = oracle_grads(h, w, b, t, 1.0, g_logp, g_ent, torch.float64, True, top_p, 0)
    for name, x, xn, xt in zip(["logp", "entropy", "dhidden", "dweight", "dbias"],
                               [logp, ent, dh, dw, db], naive, truth):
        assert_three_way(f"gpu top_p: {name}", x, xn, xt, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_gpu_default_autotuned_path_matchesoracle_grads(dtype, bias):
    """On a GPU: the default launch (autotuned over gpu_configs(dtype)) against the oracle."""
    N, H, V = 300, 256, 5000
    h, w, b, t = logprob_inputs(N, H, V, dtype, bias)
    g_logp = torch.randn(N, device=DEV)
    g_ent = torch.randn(N, device=DEV)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, 1.0, True)
    dh, dw, db = klp.linear_logprob_backward(h, w, b, t, lse, ent, 1.0, g_logp, g_ent,
                                             (True, True, bias))  # fmt: skip
    assert klp._autotuned("bwd", klp.gpu_configs(dtype)).best_config in klp.gpu_configs(dtype)
    _check_three_way((h, w, b, t), 1.0, g_logp, g_ent, [logp, ent, dh, dw, db], dtype)
