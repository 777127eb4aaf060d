"""Triton kernels: fused linear log-prob / entropy, forward and backward, no [N x V] buffer.

Maths (per token n, vocab entry k, temperature T):
    z_nk  = (h_n . w_k + b_k) / T
    lse_n = log sum_k exp(z_nk)          logp_n = z_n,t_n - lse_n
    H_n   = -sum_k p_nk log p_nk         p_nk = exp(z_nk - lse_n)
With a truncated sampler's per-row threshold c_n (THRESHOLD; ops/truncation.py) every sum
over k runs over the kept logits z_nk >= c_n (and the target) only, and p_nk = 0 elsewhere.
Backward, with upstream gradients g_n (of logp) and e_n (of entropy):
    dL/dz_nk = g_n (1[k = t_n] - p_nk) - e_n p_nk (log p_nk + H_n)
    dh = (dL/dz) W / T,  dW = (dL/dz)^T h / T,  db = sum_n dL/dz_nk / T

Design (docs/kernels.md has the long version):
- Forward: one program per (token block, vocab split). It streams the vocab range of its
  split in BLOCK_V tiles; each logits tile [BLOCK_N x BLOCK_V] is a `tl.dot` loop over H in
  BLOCK_H steps, kept in fp32 registers. An online softmax keeps, per token, the running max
  m, s = sum exp(z - m) and (for entropy) a = sum exp(z - m) (z - m), all fp32, and the
  target logit is gathered from the tile that holds it. Each split writes its four partials
  (S, N); `_logprob_combine_kernel` merges the splits in a fixed order (deterministic) and
  writes logp, lse and entropy. Splits exist for short batches (few token blocks) on GPUs
  with many SMs; with S = 1 the combine is a copy-and-log.
- Backward: one kernel over (token block, vocab block) tiles. Each program recomputes its
  logits tile from the saved lse (one tl.dot loop), forms dL/dz in fp32, and adds its
  contribution to dh (dz @ W_tile) and dW (dz^T @ h_tile) with fp32 atomics into fp32
  buffers: 3 matmuls per tile, the minimum with recomputation. Atomics make dh/dW
  bitwise nondeterministic run to run (fp32 summation order, ~1e-7 relative); the chunked
  torch backend is the deterministic alternative.
- Tile order: program ids are swizzled in groups of GROUP_N token blocks (the grouped
  ordering of the Triton matmul tutorial) so programs running at the same time share the
  weight tiles (and hidden blocks) in L2.
- UPCAST_DOT: under TRITON_INTERPRET=1, triton 3.9's `tl.dot` on bf16 operands returns
  garbage (docs/kernels.md, "The interpreter"). The launchers set UPCAST_DOT when
  interpreting 16-bit inputs, which casts the operands to fp32 before every `tl.dot`. The
  products of two bf16 numbers are exact in fp32, so this matches a tensor-core bf16 MMA
  with fp32 accumulation. On a GPU the flag is off and the tensor cores see the input dtype.
- DOT_PRECISION: fp32 inputs use "ieee" (true fp32 products, the semantics of torch.mm with
  TF32 off); 16-bit inputs use the native tensor-core path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels through its NumPy interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _grouped_tile(pid, num_n, num_v, GROUP_N: tl.constexpr):
    """Map a linear program id to (token block, vocab block) in groups of GROUP_N token
    blocks: consecutive programs walk GROUP_N token blocks on the same vocab block."""
    width = GROUP_N * num_v
    group = pid // width
    first_n = group * GROUP_N
    size = tl.minimum(num_n - first_n, GROUP_N)
    pid_n = first_n + (pid % width) % size
    pid_v = (pid % width) // size
    return pid_n, pid_v


@triton.jit
def _logits_tile(
    hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
    stride_hidden_n, stride_hidden_h, stride_weight_v, stride_weight_h, inv_temp,
    HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """fp32 tile z = (h[rows] W[cols]^T + b[cols]) / T; masked rows/cols read zeros."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_mask = ks < H
        h = tl.load(
            hidden_ptr + rows[:, None] * stride_hidden_n + ks[None, :] * stride_hidden_h,
            mask=row_mask[:, None] & k_mask[None, :], other=0.0,
        )  # (BLOCK_N, BLOCK_H)
        wt = tl.load(
            weight_ptr + cols[None, :] * stride_weight_v + ks[:, None] * stride_weight_h,
            mask=col_mask[None, :] & k_mask[:, None], other=0.0,
        )  # (BLOCK_H, BLOCK_V): the weight tile read transposed
        if UPCAST_DOT:
            h = h.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(h, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        b = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        acc = acc + b[None, :]
    return acc * inv_temp


@triton.jit
def _logprob_fwd_kernel(
    hidden_ptr,  # (N, H) hidden states, input dtype
    weight_ptr,  # (V, H) lm_head weight, input dtype
    bias_ptr,  # (V,) lm_head bias (unused unless HAS_BIAS)
    targets_ptr,  # (N,) int target ids in [0, V)
    thr_ptr,  # (N,) fp32 per-row threshold of a truncated sampler (THRESHOLD)
    part_m_ptr,  # (S, N) fp32 out: max of z over the split
    part_s_ptr,  # (S, N) fp32 out: sum exp(z - m) over the split
    part_a_ptr,  # (S, N) fp32 out: sum exp(z - m) (z - m) over the split (WITH_ENTROPY)
    part_zt_ptr,  # (S, N) fp32 out: target logit if the split holds it, else 0
    N, V, H, num_splits, v_per_split,
    stride_hidden_n, stride_hidden_h, stride_weight_v, stride_weight_h, stride_part_s,
    inv_temp,
    n_bucket,  # unused by the kernel: the autotuner's key for N (see n_bucket())
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr, THRESHOLD: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
):  # fmt: skip
    """Online log-sum-exp over one vocab split for one token block.

    m' = max(m, max_k z_k);  s' = s e^(m - m') + sum_k e^(z_k - m');
    a' = e^(m - m') (a + (m - m') s) + sum_k e^(z_k - m') (z_k - m')   [a = sum e^(z-m)(z-m)]
    """
    pid = tl.program_id(0).to(tl.int64)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_n, pid_s = _grouped_tile(pid, num_n, num_splits, GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(targets_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
    if THRESHOLD:
        thr = tl.load(thr_ptr + rows, mask=row_mask, other=float("-inf"))
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)

    # A finite "minus infinity": keeps (m - m') * s = 0 * finite when a row has seen nothing.
    m = tl.full((BLOCK_N,), -1.0e30, dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    a = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logits_tile(
            hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
            stride_hidden_n, stride_hidden_h, stride_weight_v, stride_weight_h, inv_temp,
            HAS_BIAS, UPCAST_DOT, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
        )  # fmt: skip
        live = col_mask[None, :]
        if THRESHOLD:  # a truncated sampler's dropped logits leave every sum
            live = live & ((z >= thr[:, None]) | (cols[None, :] == tgt[:, None]))
        z = tl.where(live, z, float("-inf"))
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        zc = z - m_new[:, None]  # <= 0; -inf on masked columns
        e = tl.exp(zc)
        if WITH_ENTROPY:
            # e = 0 on masked columns; zero their -inf before the product (no 0 * inf).
            ez = e * tl.where(live, zc, 0.0)
            a = alpha * (a + (m - m_new) * s) + tl.sum(ez, axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    out = pid_s * stride_part_s + rows
    tl.store(part_m_ptr + out, m, mask=row_mask)
    tl.store(part_s_ptr + out, s, mask=row_mask)
    tl.store(part_zt_ptr + out, zt, mask=row_mask)
    if WITH_ENTROPY:
        tl.store(part_a_ptr + out, a, mask=row_mask)


@triton.jit
def _logprob_combine_kernel(
    part_m_ptr,  # (S, N) fp32: per-split max
    part_s_ptr,  # (S, N) fp32: per-split sum exp(z - m)
    part_a_ptr,  # (S, N) fp32: per-split sum exp(z - m)(z - m) (WITH_ENTROPY)
    part_zt_ptr,  # (S, N) fp32: per-split target logit (0 where absent)
    logp_ptr,  # (N,) fp32 out: log-prob of the target
    lse_ptr,  # (N,) fp32 out: log-sum-exp of z
    ent_ptr,  # (N,) fp32 out: entropy (WITH_ENTROPY)
    N, num_splits, stride_part_s,
    WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Merge the splits in index order: M = max_s m_s, S = sum_s s_s e^(m_s - M),
    A = sum_s e^(m_s - M) (a_s + (m_s - M) s_s); lse = M + log S, logp = z_t - lse,
    entropy = log S - A / S."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    big_m = tl.full((BLOCK,), -1.0e30, dtype=tl.float32)
    for sp in range(0, num_splits):
        m_s = tl.load(part_m_ptr + sp * stride_part_s + rows, mask=mask, other=-1.0e30)
        big_m = tl.maximum(big_m, m_s)
    tot_s = tl.zeros((BLOCK,), dtype=tl.float32)
    tot_a = tl.zeros((BLOCK,), dtype=tl.float32)
    zt = tl.zeros((BLOCK,), dtype=tl.float32)
    for sp in range(0, num_splits):
        off = sp * stride_part_s + rows
        m_s = tl.load(part_m_ptr + off, mask=mask, other=-1.0e30)
        s_s = tl.load(part_s_ptr + off, mask=mask, other=0.0)
        scale = tl.exp(m_s - big_m)
        tot_s += s_s * scale
        zt += tl.load(part_zt_ptr + off, mask=mask, other=0.0)
        if WITH_ENTROPY:
            a_s = tl.load(part_a_ptr + off, mask=mask, other=0.0)
            tot_a += scale * (a_s + (m_s - big_m) * s_s)
    tot_s = tl.where(mask, tot_s, 1.0)
    log_s = tl.log(tot_s)
    lse = big_m + log_s
    tl.store(lse_ptr + rows, lse, mask=mask)
    tl.store(logp_ptr + rows, zt - lse, mask=mask)
    if WITH_ENTROPY:
        tl.store(ent_ptr + rows, log_s - tot_a / tot_s, mask=mask)


@triton.jit
def _logprob_bwd_kernel(
    hidden_ptr,  # (N, H) hidden states, input dtype
    weight_ptr,  # (V, H) lm_head weight, input dtype
    bias_ptr,  # (V,) lm_head bias (unused unless HAS_BIAS)
    targets_ptr,  # (N,) int target ids
    thr_ptr,  # (N,) fp32 per-row threshold of a truncated sampler (THRESHOLD)
    lse_ptr,  # (N,) fp32 log-sum-exp saved by the forward
    ent_ptr,  # (N,) fp32 entropy saved by the forward (WITH_ENTROPY)
    g_logp_ptr,  # (N,) fp32 upstream gradient of logp
    g_ent_ptr,  # (N,) fp32 upstream gradient of entropy (WITH_ENTROPY)
    dh_ptr,  # (N, H) fp32 accumulator of dL/dh, zero-initialised (NEED_DH)
    dw_ptr,  # (V, H) fp32 accumulator of dL/dW, zero-initialised (NEED_DW)
    db_ptr,  # (V,) fp32 accumulator of dL/db, zero-initialised (NEED_DB)
    N, V, H,
    stride_hidden_n, stride_hidden_h, stride_weight_v, stride_weight_h,
    stride_dh_n, stride_dw_v,
    inv_temp,
    n_bucket,  # unused by the kernel: the autotuner's key for N (see n_bucket())
    HAS_BIAS: tl.constexpr, WITH_ENTROPY: tl.constexpr, THRESHOLD: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr, GROUP_N: tl.constexpr,
):  # fmt: skip
    """One (token block, vocab block) tile of the backward:
    dz = [g (1[k = t] - p) - e p (log p + H)] / T with log p = z - lse (recomputed),
    dh += dz W_tile, dW_tile += dz^T h, db_tile += sum_n dz (fp32 atomics)."""
    pid = tl.program_id(0).to(tl.int64)
    num_n = tl.cdiv(N, BLOCK_N)
    num_v = tl.cdiv(V, BLOCK_V)
    pid_n, pid_v = _grouped_tile(pid, num_n, num_v, GROUP_N)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    z = _logits_tile(
        hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_mask, col_mask, H,
        stride_hidden_n, stride_hidden_h, stride_weight_v, stride_weight_h, inv_temp,
        HAS_BIAS, UPCAST_DOT, DOT_PRECISION, BLOCK_N, BLOCK_V, BLOCK_H,
    )  # fmt: skip
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(g_logp_ptr + rows, mask=row_mask, other=0.0)
    tgt = tl.load(targets_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
    logq = z - lse[:, None]  # log p; finite on masked entries (z read zeros there)
    p = tl.exp(logq)
    if THRESHOLD:  # dropped logits: p = 0, and log p zeroed so that p (log p + H) = 0
        thr = tl.load(thr_ptr + rows, mask=row_mask, other=float("-inf"))
        live = (z >= thr[:, None]) | (cols[None, :] == tgt[:, None])
        p = tl.where(live, p, 0.0)
        logq = tl.where(live, logq, 0.0)
    dz = tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - g[:, None] * p
    if WITH_ENTROPY:
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)
        ge = tl.load(g_ent_ptr + rows, mask=row_mask, other=0.0)
        dz -= ge[:, None] * p * (logq + ent[:, None])
    dz = tl.where(row_mask[:, None] & col_mask[None, :], dz * inv_temp, 0.0)
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    if NEED_DH or NEED_DW:
        # dz enters the matmuls in the input dtype, as in torch_chunked (tensor-core path).
        # Under the interpreter's upcast it is still rounded to that dtype first, so the
        # CPU tests see the same numerics as a GPU.
        dzd = dz.to(hidden_ptr.dtype.element_ty)
        if UPCAST_DOT:
            dzd = dzd.to(tl.float32)
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_mask = ks < H
            if NEED_DH:
                w = tl.load(
                    weight_ptr + cols[:, None] * stride_weight_v + ks[None, :] * stride_weight_h,
                    mask=col_mask[:, None] & k_mask[None, :], other=0.0,
                )  # (BLOCK_V, BLOCK_H)
                if UPCAST_DOT:
                    w = w.to(tl.float32)
                dh = tl.dot(dzd, w, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_H)
                tl.atomic_add(
                    dh_ptr + rows[:, None] * stride_dh_n + ks[None, :], dh,
                    mask=row_mask[:, None] & k_mask[None, :],
                )
            if NEED_DW:
                h = tl.load(
                    hidden_ptr + rows[:, None] * stride_hidden_n + ks[None, :] * stride_hidden_h,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0,
                )  # (BLOCK_N, BLOCK_H)
                if UPCAST_DOT:
                    h = h.to(tl.float32)
                dw = tl.dot(tl.trans(dzd), h, input_precision=DOT_PRECISION)  # (BLOCK_V, BLOCK_H)
                tl.atomic_add(
                    dw_ptr + cols[:, None] * stride_dw_v + ks[None, :], dw,
                    mask=col_mask[:, None] & k_mask[None, :],
                )


# ---------------------------------------------------------------------------------------
# Configurations. Ampere (A100: 163 KiB shared memory per block, 108 SMs) and Hopper (H100:
# 227 KiB, 132 SMs). BLOCK_V 256 halves the number of times a hidden block is re-read from
# L2 and suits H100's larger register file (8 warps); A100 tends to prefer 128 x 128 with
# 4 warps. The autotuner picks per (H, V, dtype). Shared memory per config is what
# `python -m rgpo_fast.kernels.compile_check` reports from the compiled kernels (no GPU
# needed): the 16-bit backward needs 48-128 KiB, within both limits. fp32 tiles take twice
# the bytes and the backward keeps dL/dz in shared memory for its transposed dot: with the
# 16-bit list every fp32 backward config needed 168-336 KiB, over A100's limit, so fp32 has
# its own list (56-112 KiB). None of these could be timed on this project's CPU machines.
# ---------------------------------------------------------------------------------------
def _configs(shapes) -> tuple[triton.Config, ...]:
    """(BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) -> triton.Config, GROUP_N 8."""
    return tuple(
        triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_H": bh, "GROUP_N": 8},
                      num_warps=warps, num_stages=stages)
        for bn, bv, bh, warps, stages in shapes
    )  # fmt: skip


GPU_CONFIGS = _configs([  # 16-bit inputs
    (128, 128, 64, 4, 4),
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (64, 256, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 128, 32, 4, 4),
])
GPU_CONFIGS_FP32 = _configs([
    (128, 128, 32, 8, 2),
    (64, 128, 32, 4, 3),
    (64, 128, 32, 4, 2),
    (64, 64, 32, 4, 3),
])


def gpu_configs(dtype: torch.dtype) -> tuple[triton.Config, ...]:
    """The autotune list for inputs of `dtype` on a GPU."""
    return GPU_CONFIGS_FP32 if dtype == torch.float32 else GPU_CONFIGS


# Two small tiles for the autotuned path under the interpreter (tests): the autotuner's
# timing runs, its `reset_to_zero` pre-hook and its final launch all execute on CPU.
INTERPRET_CONFIGS = (
    triton.Config({"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16, "GROUP_N": 2}),
    triton.Config({"BLOCK_N": 32, "BLOCK_V": 64, "BLOCK_H": 32, "GROUP_N": 4}),
)

# Outputs of the backward accumulated with atomics: the autotuner zeroes them before every
# timing run and before the real launch, so they must never alias anything the kernel reads
# (launchers pass a fresh placeholder for an output that is not wanted, see _placeholder).
BWD_RESET_TO_ZERO = ("dh_ptr", "dw_ptr", "db_ptr")


def _interpreter_bench(kernel_call, quantiles):
    """Wall time of one call: the autotuner's benchmarker under TRITON_INTERPRET=1, where
    Triton has no active GPU driver to time with (its default benchmarker raises)."""
    import time

    t0 = time.perf_counter()
    kernel_call()
    ms = (time.perf_counter() - t0) * 1e3
    return [ms] * len(quantiles)


def n_bucket(n: int) -> int:
    """N rounded up to a power of two (at least 16): the autotuner's key for the token
    count. Keyed on H and V alone, the first N tuned (possibly a 1-token dummy forward)
    chose the tiles for every later N; keyed on N itself, every micro-batch length would
    be tuned anew. Powers of two >= 16 are all divisible by 16, so Triton compiles one
    specialisation for every bucket: a new bucket costs timing runs, no compiles."""
    return max(16, triton.next_power_of_2(max(int(n), 1)))


# What the best tile depends on: the shape (H, V, the bucket of N) and every constexpr
# flag of the launch (bias, entropy, which gradients, the dot's precision), which change
# the kernel's work and registers. Tensor dtypes are added to the key by Triton itself.
TUNE_KEYS = {
    "fwd": ["H", "V", "n_bucket", "HAS_BIAS", "WITH_ENTROPY", "THRESHOLD", "UPCAST_DOT",
            "DOT_PRECISION"],
    "bwd": ["H", "V", "n_bucket", "HAS_BIAS", "WITH_ENTROPY", "THRESHOLD", "NEED_DH",
            "NEED_DW", "NEED_DB", "UPCAST_DOT", "DOT_PRECISION"],
}  # fmt: skip


@functools.cache
def _autotuned(direction: str, configs: tuple[triton.Config, ...]):
    """The autotuned forward ("fwd") or backward ("bwd") kernel over `configs` (cached per
    config list: one tuning cache per list), keyed on TUNE_KEYS."""
    kernel = {"fwd": _logprob_fwd_kernel, "bwd": _logprob_bwd_kernel}[direction]
    reset = list(BWD_RESET_TO_ZERO) if direction == "bwd" else None
    bench = _interpreter_bench if interpreting() else None
    return triton.autotune(
        configs=list(configs), key=TUNE_KEYS[direction], reset_to_zero=reset, do_bench=bench
    )(kernel)


# Interpreter blocks: each program instance costs Python + NumPy overhead per op, so use
# blocks big enough to keep the instance count low but small enough that ragged test shapes
# (N, V, H of a few dozen) still hit partial tiles in every dimension.
INTERPRET_BLOCKS = {"BLOCK_N": 32, "BLOCK_V": 64, "BLOCK_H": 32, "GROUP_N": 4}
# Largest BLOCK_V among the GPU configs: the split-count heuristic keeps >= 4 such tiles
# per split.
_MAX_BLOCK_V = max(c.kwargs["BLOCK_V"] for c in GPU_CONFIGS + GPU_CONFIGS_FP32)


def _check_inputs(hidden, weight, bias, targets, threshold=None):
    assert hidden.dim() == 2 and weight.dim() == 2, "hidden (N, H) and weight (V, H)"
    assert hidden.shape[1] == weight.shape[1], "hidden and weight disagree on H"
    assert hidden.dtype == weight.dtype, "hidden and weight must share a dtype"
    assert hidden.dtype in (torch.float32, torch.float16, torch.bfloat16), hidden.dtype
    assert targets.shape == (hidden.shape[0],), "targets must be (N,)"
    assert targets.dtype in (torch.int32, torch.int64), "targets must be integer"
    assert hidden.device == weight.device == targets.device
    if bias is not None:
        assert bias.shape == (weight.shape[0],) and bias.device == weight.device
        assert bias.is_contiguous()
    assert targets.is_contiguous()
    if threshold is not None:
        assert threshold.shape == (hidden.shape[0],) and threshold.dtype == torch.float32
        assert threshold.is_contiguous() and threshold.device == hidden.device


def _dot_flags(dtype: torch.dtype) -> dict:
    upcast = interpreting() and dtype != torch.float32
    return {"UPCAST_DOT": upcast, "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32"}


def interpret_blocks() -> dict:
    """Tiles used under the interpreter: INTERPRET_BLOCKS, or GPU-sized ones from the
    environment, RGPO_FAST_INTERPRET_BLOCKS="BLOCK_N,BLOCK_V,BLOCK_H" (powers of two >= 16);
    bigger tiles mean fewer program instances and a much faster interpreter run."""
    env = os.environ.get("RGPO_FAST_INTERPRET_BLOCKS")
    if not env:
        return dict(INTERPRET_BLOCKS)
    bn, bv, bh = (int(x) for x in env.split(","))
    for b in (bn, bv, bh):
        assert b >= 16 and b & (b - 1) == 0, f"RGPO_FAST_INTERPRET_BLOCKS: bad block {b}"
    return {**INTERPRET_BLOCKS, "BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_H": bh}


def _launch_plan(blocks: dict | None, configs: Sequence[triton.Config] | None,
                 dtype: torch.dtype = torch.bfloat16):
    """-> (fixed tile sizes, None) or (None, autotune config list).

    Default: autotuned over gpu_configs(dtype) on a GPU, fixed interpreter blocks under
    TRITON_INTERPRET=1. `blocks` fixes the tiles; `configs` forces the autotuned path over
    that list (on the interpreter too: how the tests reach the autotuner without a GPU)."""
    if blocks is not None and configs is not None:
        raise ValueError("pass either blocks= (fixed tiles) or configs= (autotuned), not both")
    if blocks is not None:
        return {**INTERPRET_BLOCKS, **blocks}, None
    if configs is not None:
        if not configs:
            raise ValueError("configs= must list at least one triton.Config")
        return None, tuple(configs)
    if interpreting():
        return interpret_blocks(), None
    return None, gpu_configs(dtype)


def _placeholder(device: torch.device) -> torch.Tensor:
    """A fresh one-element buffer for a pointer argument whose flag is off. Never reuse an
    input or output of the launch for it: the autotuner zeroes `reset_to_zero` arguments
    and the kernel may write outputs, so an alias would corrupt what the kernel reads
    (a zeroed lse turned the backward's p = exp(z - lse) into exp(z))."""
    return torch.empty(1, dtype=torch.float32, device=device)


def _num_splits(n_tokens: int, vocab: int, device: torch.device, num_splits: int | None) -> int:
    """Vocab splits of the forward: enough programs to fill the GPU when N is small."""
    if num_splits is not None:
        return max(1, int(num_splits))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    token_blocks = triton.cdiv(n_tokens, 128)
    want = triton.cdiv(2 * sms, token_blocks)
    return max(1, min(want, triton.cdiv(vocab, 4 * _MAX_BLOCK_V)))


def linear_logprob_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    *,
    blocks: dict | None = None,
    configs: Sequence[triton.Config] | None = None,
    num_splits: int | None = None,
    threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, H), (V, H), (V,)|None, (N,) -> logp, lse, entropy|None: fp32 (N,) each.
    `threshold` (N,) fp32: a truncated sampler's per-row cut (the sums skip logits below it).

    `blocks` fixes BLOCK_N/BLOCK_V/BLOCK_H/GROUP_N; `configs` autotunes over that list
    (default: autotuned over gpu_configs(dtype) on GPU, small fixed blocks under the
    interpreter);
    `num_splits` fixes the number of vocab splits.
    """
    _check_inputs(hidden, weight, bias, targets, threshold)
    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    logp = torch.empty(N, dtype=torch.float32, device=dev)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if with_entropy else None
    if N == 0:
        return logp, lse, ent
    blk, tune = _launch_plan(blocks, configs, hidden.dtype)
    S = _num_splits(N, V, dev, num_splits)
    # Split boundaries are multiples of every candidate BLOCK_V: no tile straddles two.
    unit = blk["BLOCK_V"] if blk is not None else max(c.kwargs["BLOCK_V"] for c in tune)
    v_per_split = triton.cdiv(triton.cdiv(V, S), unit) * unit
    S = triton.cdiv(V, v_per_split)  # no empty split after rounding
    part = torch.empty((4, S, N), dtype=torch.float32, device=dev)
    args = (
        hidden, weight, bias if bias is not None else _placeholder(dev), targets,
        threshold if threshold is not None else _placeholder(dev),
        part[0], part[1], part[2], part[3],
        N, V, H, S, v_per_split,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), part.stride(1),
        1.0 / float(temperature), n_bucket(N),
    )  # fmt: skip
    flags = {"HAS_BIAS": bias is not None, "WITH_ENTROPY": with_entropy,
             "THRESHOLD": threshold is not None, **_dot_flags(hidden.dtype)}  # fmt: skip
    if blk is not None:
        grid = (triton.cdiv(N, blk["BLOCK_N"]) * S,)
        _logprob_fwd_kernel[grid](*args, **flags, **blk)
    else:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * S,)
        _autotuned("fwd", tune)[grid](*args, **flags)
    block = 128
    _logprob_combine_kernel[(triton.cdiv(N, block),)](
        part[0], part[1], part[2], part[3], logp, lse,
        ent if ent is not None else _placeholder(dev),
        N, S, part.stride(1), WITH_ENTROPY=with_entropy, BLOCK=block,
    )  # fmt: skip
    return logp, lse, ent


def linear_logprob_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
    *,
    blocks: dict | None = None,
    configs: Sequence[triton.Config] | None = None,
    threshold: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dh, dW, db) in the input dtypes (None where `needs` says so).

    g_ent (with the forward's entropy) adds the entropy term; without it only logp flows.
    `blocks` / `configs` / `threshold` as in `linear_logprob_forward`.
    """
    _check_inputs(hidden, weight, bias, targets, threshold)
    need_h, need_w, need_b = needs
    need_b = bool(need_b and bias is not None)
    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    with_ent = g_ent is not None
    for name, t in (("lse", lse), ("g_logp", g_logp)) + (
        (("entropy", entropy), ("g_ent", g_ent)) if with_ent else ()
    ):
        assert t is not None and t.shape == (N,) and t.dtype == torch.float32, name
        assert t.is_contiguous(), f"{name} must be contiguous"
    f32 = torch.float32
    dh = torch.zeros((N, H), dtype=f32, device=dev) if need_h else None
    dw = torch.zeros((V, H), dtype=f32, device=dev) if need_w else None
    db = torch.zeros(V, dtype=f32, device=dev) if need_b else None
    if N > 0 and (need_h or need_w or need_b):
        def given(t):  # the tensor, or a placeholder of its own (see _placeholder)
            return t if t is not None else _placeholder(dev)

        args = (
            hidden, weight, given(bias), targets, given(threshold), lse,
            given(entropy if with_ent else None), g_logp, given(g_ent),
            given(dh), given(dw), given(db),
            N, V, H,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            H, H,
            1.0 / float(temperature), n_bucket(N),
        )  # fmt: skip
        flags = {"HAS_BIAS": bias is not None, "WITH_ENTROPY": with_ent,
                 "THRESHOLD": threshold is not None, "NEED_DH": need_h, "NEED_DW": need_w,
                 "NEED_DB": need_b, **_dot_flags(hidden.dtype)}  # fmt: skip
        blk, tune = _launch_plan(blocks, configs, hidden.dtype)
        if blk is not None:
            grid = (triton.cdiv(N, blk["BLOCK_N"]) * triton.cdiv(V, blk["BLOCK_V"]),)
            _logprob_bwd_kernel[grid](*args, **flags, **blk)
        else:
            grid = lambda meta: (
                triton.cdiv(N, meta["BLOCK_N"]) * triton.cdiv(V, meta["BLOCK_V"]),
            )
            _autotuned("bwd", tune)[grid](*args, **flags)
    if dh is not None and dh.dtype != hidden.dtype:
        dh = dh.to(hidden.dtype)
    if dw is not None and dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    if db is not None and db.dtype != bias.dtype:
        db = db.to(bias.dtype)
    return dh, dw, db
