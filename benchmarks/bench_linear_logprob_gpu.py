"""GPU benchmark of the fused linear log-prob op, and an interpreter correctness check.

GPU mode (needs CUDA; on a machine without it, prints one line and exits 0):

  python benchmarks/bench_linear_logprob_gpu.py                  # bf16, default shapes
  python benchmarks/bench_linear_logprob_gpu.py --dtype float32 --shape 8192,4096,128256

Providers: triton (impl="triton"), cuda (impl="cuda", rgpo_fast._C_cuda), torch (the
chunked PyTorch backend), naive (full logits
+ log_softmax + autograd), liger (LigerFusedLinearCrossEntropyLoss, reduction="none", whose
per-token loss is -logp), floor (the three matmuls of the op alone on cuBLAS: logits,
dHidden, dWeight). Modes: forward (no grad), backward (the backward pass alone, graph
retained) and full (forward + backward). Times are `triton.testing.do_bench` quantiles
(median, 20th and 80th percentile, ms).

FLOP model (matmul FLOPs the op must do, N tokens, H hidden, V vocab):
  forward 2NHV; backward 4NHV (dHidden, dWeight); full 6NHV (the three-matmul floor).
TFLOP/s below always divide that *useful* work by the time; providers that recompute
the logits in the backward (triton, torch, liger) execute 8NHV in `full`, so their column
`exec_tflops` uses 2NHV + 6NHV. Peak memory is torch.cuda.max_memory_allocated during one
run minus the memory held before it (inputs), i.e. working memory plus returned gradients.

Interpreter check (CPU, no GPU needed):

  python benchmarks/bench_linear_logprob_gpu.py --check-interpreter

runs the Triton kernels through TRITON_INTERPRET=1 at N=256, H=256, V=32768 (fp32 unless
--dtype bfloat16; bias, temperature 0.8, entropy; about 2 minutes on 2 cores) and prints
the max errors of logp, entropy, dHidden, dWeight and dBias against the float64 oracle
of rgpo_fast.oracle (and the torch backend's errors for scale).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

GPU_SHAPES = {  # (N, H, V)
    "qwen2.5-0.5b": (8192, 896, 151936),
    "llama3-8b": (8192, 4096, 128256),
    "small-vocab": (16384, 2048, 32768),
}
# "-topp": the log-probs of a top_p = TOP_P sampler (a thresholds pass, then the kernels
# skipping the dropped logits): what the truncated-sampler path costs against the plain one.
PROVIDERS = ("triton", "cuda", "torch", "triton-topp", "torch-topp", "naive", "liger", "floor")
TOP_P = 0.9
MODES = ("forward", "backward", "full")
CHECK_SHAPE = (256, 256, 32768)
CHECK_BLOCKS = "128,256,64"  # BLOCK_N, BLOCK_V, BLOCK_H of the interpreter check


def flops(mode: str, n: int, h: int, v: int, recompute: bool) -> tuple[float, float]:
    """(useful, executed) matmul FLOPs of one call in `mode`."""
    unit = 2.0 * n * h * v
    useful = {"forward": 1, "backward": 2, "full": 3}[mode] * unit
    executed = useful + (unit if recompute and mode != "forward" else 0.0)
    return useful, executed


def _make(n, h, v, dtype, device, grad):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = (torch.randn(n, h, generator=g) / h**0.25).to(device=device, dtype=dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.25).to(device=device, dtype=dtype)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    hidden.requires_grad_(grad)
    weight.requires_grad_(grad)
    return hidden, weight, targets


def _forward_fn(provider, hidden, weight, targets):
    """A closure returning per-token log-probs (or the floor's logits) for one provider."""

    if provider in ("triton", "cuda", "torch", "triton-topp", "torch-topp"):
        from rgpo_fast import fused_linear_logprobs

        impl, _, topp = provider.partition("-")
        top_p = TOP_P if topp else 1.0
        return lambda: fused_linear_logprobs(hidden, weight, targets, impl=impl, top_p=top_p)[0]
    if provider == "naive":
        from rgpo_fast.oracle import naive_logprobs

        return lambda: naive_logprobs(hidden, weight, targets, upcast=False)[0]
    if provider == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        ce = LigerFusedLinearCrossEntropyLoss(reduction="none")
        return lambda: -ce(weight, hidden, targets)
    if provider == "floor":
        h, w = hidden.detach(), weight.detach()

        def floor():  # logits, dHidden-shaped and dWeight-shaped products: 6NHV
            z = h @ w.t()
            z @ w
            z.t() @ h
            return z

        return floor
    raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")


def bench_one(provider, mode, n, h, v, dtype):
    """One (provider, mode) measurement on the current GPU: a dict row (or an error)."""
    import torch
    import triton

    if provider == "floor" and mode != "full":
        return None
    grad = mode != "forward" and provider != "floor"
    hidden, weight, targets = _make(n, h, v, dtype, "cuda", grad)
    fwd = _forward_fn(provider, hidden, weight, targets)
    g_out = torch.linspace(-1, 1, n, device="cuda")
    params = [hidden, weight]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if mode == "forward":
        with torch.no_grad():
            fn = fwd
            fn()  # warm-up / autotune
    elif mode == "full":
        if provider == "floor":
            fn = fwd
        else:

            def fn():
                fwd().backward(g_out)

        fn()
    else:  # backward alone: one forward, then time backward with the graph retained
        out = fwd()

        def fn():
            out.backward(g_out, retain_graph=True)

        fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grad_to_none = params if grad else None
    ms, lo, hi = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    recompute = provider in ("triton", "cuda", "torch", "triton-topp", "torch-topp", "liger")
    useful, executed = flops(mode, n, h, v, recompute)
    return {
        "provider": provider, "mode": mode, "ms": round(ms, 4), "ms_p20": round(lo, 4),
        "ms_p80": round(hi, 4), "tflops": round(useful / ms * 1e-9, 2),
        "exec_tflops": round(executed / ms * 1e-9, 2), "peak_mb": round(peak / 2**20, 1),
    }  # fmt: skip


def gpu_main(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark needs one (nothing to do here).")
        return 0
    import triton
    from common import append_csv, git_sha

    dtype = getattr(torch, getattr(args, "dtype", None) or "bfloat16")
    if getattr(args, "shape", None):
        shapes = {"custom": tuple(map(int, args.shape.split(",")))}
    else:
        shapes = GPU_SHAPES
    providers = args.providers.split(",") if getattr(args, "providers", None) else PROVIDERS
    gpu = torch.cuda.get_device_name()
    print(f"# {gpu}, torch {torch.__version__}, triton {triton.__version__}, {dtype}")
    rows = []
    for label, (n, h, v) in shapes.items():
        print(f"\n{label}: N={n} H={h} V={v}  (useful FLOPs: fwd 2NHV, bwd 4NHV, full 6NHV)")
        print(f"  {'provider':8s} {'mode':8s} {'ms':>9s} {'p20':>9s} {'p80':>9s} "
              f"{'TFLOP/s':>8s} {'exec':>8s} {'peak MiB':>9s}")  # fmt: skip
        floor_ms = None
        for provider in providers:
            for mode in MODES:
                try:
                    r = bench_one(provider, mode, n, h, v, dtype)
                except Exception as e:  # noqa: BLE001 - one failing peer must not stop the table
                    print(f"  {provider:8s} {mode:8s} error: {type(e).__name__}: {e}"[:200])
                    torch.cuda.empty_cache()
                    continue
                torch.cuda.empty_cache()
                if r is None:
                    continue
                if provider == "floor":
                    floor_ms = r["ms"]
                print(f"  {provider:8s} {mode:8s} {r['ms']:9.3f} {r['ms_p20']:9.3f} "
                      f"{r['ms_p80']:9.3f} {r['tflops']:8.1f} {r['exec_tflops']:8.1f} "
                      f"{r['peak_mb']:9.0f}")  # fmt: skip
                rows.append({"gpu": gpu, "shape": label, "N": n, "H": h, "V": v,
                             "dtype": str(dtype).replace("torch.", ""), **r})  # fmt: skip
        if floor_ms:
            for r in rows:
                if r["shape"] == label and r["mode"] == "full" and r["provider"] != "floor":
                    r["full_vs_floor"] = round(r["ms"] / floor_ms, 3)
                    print(f"  {r['provider']:8s} full / three-matmul floor = "
                          f"{r['full_vs_floor']:.2f}x")  # fmt: skip
    if rows and not getattr(args, "no_csv", False):
        meta = {"torch": torch.__version__, "triton": triton.__version__, "git_sha": git_sha(),
                "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
        keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[-1]).index(k)
                      if k in rows[-1] else 99)  # fmt: skip
        full_rows = [{**meta, **{k: r.get(k, "") for k in keys}} for r in rows]
        path = append_csv("bench_linear_logprob_gpu.csv", full_rows)
        print(f"\nrows appended to {path}")
    return 0


def check_interpreter(args=None) -> int:
    """Triton kernels under TRITON_INTERPRET=1 on CPU at N=256, H=256, V=32768 vs the oracle."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        print("triton was imported before TRITON_INTERPRET=1 could be set; run this check in "
              "a fresh process (python benchmarks/bench_linear_logprob_gpu.py --check-interpreter)")
        return 1
    os.environ["TRITON_INTERPRET"] = "1"
    # GPU-sized tiles (the interpreter default is small, for ragged unit tests): 32x fewer
    # program instances, and the tiling a GPU would actually run.
    os.environ.setdefault("RGPO_FAST_INTERPRET_BLOCKS", CHECK_BLOCKS)
    import torch

    from rgpo_fast import fused_linear_logprobs
    from rgpo_fast.oracle import naive_logprobs

    n, h, v = CHECK_SHAPE
    dtype = getattr(torch, getattr(args, "dtype", None) or "float32")
    temperature = 0.8
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, h, generator=g) / h**0.25).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.25).to(dtype)
    bias = (0.5 * torch.randn(v, generator=g)).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    g_logp = torch.linspace(-1, 1, n)
    g_ent = torch.linspace(0.5, -0.5, n)

    def run(kind):
        ps = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        t0 = time.perf_counter()
        if kind == "oracle":
            lp, ent = naive_logprobs(*ps[:2], targets, ps[2], temperature, True, torch.float64)
        else:
            lp, ent = fused_linear_logprobs(ps[0], ps[1], targets, bias=ps[2],
                                            temperature=temperature, return_entropy=True,
                                            impl=kind)  # fmt: skip
        t1 = time.perf_counter()
        ((lp * g_logp.to(lp.dtype)).sum() + (ent * g_ent.to(ent.dtype)).sum()).backward()
        t2 = time.perf_counter()
        return [lp.detach(), ent.detach()] + [p.grad for p in ps], (t1 - t0, t2 - t1)

    tiles = os.environ["RGPO_FAST_INTERPRET_BLOCKS"]
    print(f"interpreter check: N={n} H={h} V={v}, {str(dtype)[6:]}, bias, "
          f"temperature {temperature}, entropy, tiles (N, V, H) = ({tiles}); "
          f"errors vs the float64 oracle")  # fmt: skip
    truth, _ = run("oracle")
    names = ("logp", "entropy", "dhidden", "dweight", "dbias")
    worst = {}
    for kind in ("triton", "torch"):
        got, (tf, tb) = run(kind)
        errs = []
        for name, x, t in zip(names, got, truth):
            ab = (x.double() - t).abs().max().item()
            rel = ab / (t.abs().max().item() + 1e-12)
            errs.append(f"{name} {ab:.2e} (rel {rel:.1e})")
            worst[kind] = max(worst.get(kind, 0.0), rel)
        print(f"  {kind:7s} fwd {tf:6.1f}s bwd {tb:6.1f}s | max abs err: " + ", ".join(errs))
    # fp32: absolute bound; 16-bit: the three-way spirit, at most twice the torch backend's
    # error (whose logits are rounded to the input dtype) plus a slack.
    bound = 1e-4 if dtype == torch.float32 else 2 * worst["torch"] + 1e-2
    ok = worst["triton"] < bound
    print(f"  triton worst relative error {worst['triton']:.2e} (bound {bound:.1e}): "
          f"{'OK' if ok else 'TOO LARGE'}")  # fmt: skip
    return 0 if ok else 1


def main(args) -> int:
    """The command line's modes: --check-interpreter, then --gpu (the default)."""
    if getattr(args, "check_interpreter", False):
        rc = check_interpreter(args)
        if rc or not getattr(args, "gpu", False):
            sys.exit(rc)
    if getattr(args, "gpu", False):
        sys.exit(gpu_main(args))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run the GPU benchmark")
    p.add_argument("--check-interpreter", action="store_true",
                   help="check the Triton kernels under TRITON_INTERPRET=1 at N=256,H=256,V=32768")
    p.add_argument("--shape", default=None, help="N,H,V (default: GPU_SHAPES)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="GPU mode: default bfloat16; interpreter check: default float32")
    p.add_argument("--providers", default=None, help=f"comma list of {', '.join(PROVIDERS)}")
    p.add_argument("--no-csv", action="store_true")
    a = p.parse_args()
    if not (a.gpu or a.check_interpreter):
        a.gpu = True
    main(a)
