"""Fused linear policy loss: forward + backward, side by side with its peers.

Providers (each in its own subprocess, so peak memory is its own):
  fused:<impl>  FusedLinearRGPOLoss with impl = torch / cpp / ... (every CPU backend built)
  fused-topp:<impl>  the same with top_p = 0.9 (the log-probs of a nucleus sampler: a
                thresholds pass over the logits, then the composed path; not impl=cuda)
  naive         the oracle: full fp32 logits, log_softmax, autograd (rgpo_fast.oracle)
  naive-topp    the oracle with top_p = 0.9 (the check of fused-topp's loss)
  liger         Liger-Kernel's LigerFusedLinearGRPOLoss(compiled=False), chunked torch
  floor         the three equivalent matmuls alone: logits, dHidden, dWeight (compute floor)

All solve the same problem: token-level clipped GRPO loss with old log-probs, token-mean,
no KL (the -topp providers: the same under a top_p = 0.9 sampler). The script checks that
the losses agree before reporting, and prints what the top-p path costs against the plain
one (fused-topp:<impl> / fused:<impl>).

Working memory = peak RSS - RSS after the inputs exist - bytes of dHidden and dWeight
(the gradients any method must return).

The machines are noisy (2 shared cores), so providers are alternated: every repeat runs
each provider once, in a fresh process (one warm-up call, one timed call), and the table
reports the median over repeats. Ratios therefore compare runs made under the same load.

  python benchmarks/bench_policy_loss.py              # both issue shapes, fp32, CPU
  python benchmarks/bench_policy_loss.py --quick      # a small shape, seconds
  python benchmarks/bench_policy_loss.py --logit-scale 6 \
      --providers fused:torch,fused-topp:torch,naive-topp   # top-p on peaked logits

The log-prob op on a GPU, and the Triton kernels under the interpreter, have their own
script: benchmarks/bench_linear_logprob_gpu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

SHAPES = {"qwen": (1024, 896, 151936), "small-vocab": (4096, 256, 32768)}
QUICK_SHAPES = {"quick": (512, 128, 8192)}
SEQ_LEN = 128  # tokens per sequence; B = N / SEQ_LEN (Liger chunks by sequence)
TOP_P = 0.9  # the -topp providers' nucleus


def make_inputs(n, h, v, dtype, seed=0, logit_scale=1.0):
    import torch

    g = torch.Generator().manual_seed(seed)
    b = n // SEQ_LEN
    # In-place scaling: no temporary copy of the (V, H) weight inflates the RSS baseline.
    # Logits have standard deviation `logit_scale`: 1 gives a near-uniform next-token
    # distribution (entropy ~11 nats at V = 152k: the widest nucleus, the top-p path's worst
    # case), 6 a peaked one (~2.5 nats, a nucleus of ~20 tokens at top_p 0.9: a trained LM).
    hidden = torch.randn(b, SEQ_LEN, h, generator=g).div_(h**0.25).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g).mul_(logit_scale / h**0.25).to(dtype)
              .requires_grad_())
    targets = torch.randint(0, v, (b, SEQ_LEN), generator=g)
    mask = torch.ones(b, SEQ_LEN, dtype=torch.bool)
    adv = torch.randn(b, generator=g)
    # Old log-probs: plausible values so that some ratios clip.
    old = -torch.rand(b, SEQ_LEN, generator=g) * 3 - 8
    return hidden, weight, targets, mask, adv, old


def provider_fn(name, inputs):
    """A closure that runs forward + backward once and returns the loss value."""

    hidden, weight, targets, mask, adv, old = inputs
    if name.startswith(("fused:", "fused-topp:")):
        from rgpo_fast import FusedLinearRGPOLoss

        chunk = int(os.environ.get("RGPO_FAST_BENCH_CHUNK", 0)) or None
        loss_fn = FusedLinearRGPOLoss(impl=name.split(":", 1)[1], chunk_size=chunk,
                                      top_p=TOP_P if name.startswith("fused-topp") else 1.0)

        def run():
            loss, _ = loss_fn(hidden, weight, targets, mask, adv, old_logprobs=old)
            loss.backward()
            return loss.item()

    elif name in ("naive", "naive-topp"):
        from rgpo_fast.oracle import naive_policy_loss

        top_p = TOP_P if name == "naive-topp" else 1.0

        def run():
            loss, _ = naive_policy_loss(hidden, weight, targets, mask, adv, old_logprobs=old,
                                        top_p=top_p)
            loss.backward()
            return loss.item()

    elif name == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        loss_fn = LigerFusedLinearGRPOLoss(
            beta=0.0, compiled=False, use_ref_model=False, loss_type="bnpo"
        )

        def run():
            out = loss_fn(hidden, weight, targets, mask.long(), adv, old_per_token_logps=old)
            loss = out[0] if isinstance(out, tuple) else out
            loss.backward()
            return loss.item()

    elif name == "floor":
        h2 = hidden.detach().reshape(-1, hidden.shape[-1])
        w = weight.detach()

        def run():
            z = h2 @ w.t()  # logits      (N, V): 2NHV flops
            z @ w  # dHidden              (N, H): 2NHV
            z.t() @ h2  # dWeight         (V, H): 2NHV
            return float("nan")

    else:
        raise ValueError(f"unknown provider {name!r}")
    return run


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    from common import peak_rss_bytes

    n, h, v = map(int, args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(n, h, v, dtype, logit_scale=args.logit_scale)
    run = provider_fn(args.worker, inputs)
    base = peak_rss_bytes()
    loss, elapsed = None, 0.0
    for _ in range(2):  # a warm-up call, then the timed one
        for t in inputs[:2]:
            t.grad = None
        t0 = time.perf_counter()
        loss = run()
        elapsed = time.perf_counter() - t0
    grads = 0 if args.worker == "floor" else sum(t.numel() * t.element_size() for t in inputs[:2])
    work = peak_rss_bytes() - base - grads
    print(
        json.dumps(
            {"provider": args.worker, "time_s": elapsed, "working_mb": work / 2**20, "loss": loss}
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small shape, for a smoke run")
    p.add_argument("--shape", default=None, help="N,H,V (overrides the default shapes)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating rounds; each runs every provider once (median reported)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="token rows per logits block of the fused providers (default: auto)",
    )
    p.add_argument("--providers", default=None, help="comma list (default: all available)")
    p.add_argument("--logit-scale", type=float, default=1.0,
                   help="standard deviation of the logits (1: near-uniform, 6: peaked)")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.chunk_size:
        os.environ["RGPO_FAST_BENCH_CHUNK"] = str(args.chunk_size)  # seen by the workers
    if args.worker:
        return worker(args)
    import torch
    from common import append_csv, git_sha, machine, run_worker

    from rgpo_fast.ops.backends import available_backends

    if args.providers:
        providers = args.providers.split(",")
    else:
        impls = [b for b in available_backends("cpu") if b != "triton"]  # interpreter: no
        providers = ([f"fused:{b}" for b in impls] + [f"fused-topp:{b}" for b in impls]
                     + ["naive", "naive-topp", "liger", "floor"])
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shape:
        shapes = {"custom": tuple(map(int, args.shape.split(",")))}
    rows = []
    print(
        f"# {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.dtype}, logit scale {args.logit_scale}, median of {args.repeats} alternating "
        "rounds"
    )
    for label, (n, h, v) in shapes.items():
        runs = {prov: [] for prov in providers}
        for rep in range(args.repeats):  # alternate providers: each repeat sees one load
            for prov in providers:
                r = run_worker(
                    str(HERE), ["--worker", prov, "--shape", f"{n},{h},{v}", "--dtype", args.dtype,
                                "--logit-scale", str(args.logit_scale)]
                )
                runs[prov].append(r)
                status = r.get("error") or f"{r['time_s']:.3f}s  {r['working_mb']:.0f} MiB"
                print(
                    f"  [{rep + 1}/{args.repeats}] {label} N={n} H={h} V={v}  {prov:12s} {status}",
                    flush=True,
                )
        res = {prov: _median_run(rs) for prov, rs in runs.items()}
        for topp in (False, True):  # the plain providers agree, and the top-p ones
            losses = [r["loss"] for k, r in res.items() if "loss" in r and k != "floor"
                      and ("topp" in k) == topp]
            if losses and max(losses) - min(losses) > 1e-3 * (abs(losses[0]) + 1e-3):
                print(f"  WARNING: providers disagree on the loss: {losses}")
        rows += _report(label, n, h, v, args.dtype, res, providers)
    if not args.no_csv and rows:
        meta = {
            "machine": machine(),
            "torch": torch.__version__,
            "git_sha": git_sha(),
            "logit_scale": args.logit_scale,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        path = append_csv("bench_policy_loss.csv", [{**meta, **r} for r in rows])
        print(f"rows appended to {os.path.relpath(path)}")


def _median_run(runs: list[dict]) -> dict:
    ok = [r for r in runs if "time_s" in r]
    if not ok:
        return runs[-1]
    times = sorted(r["time_s"] for r in ok)
    return {
        "time_s": times[len(times) // 2],
        "working_mb": max(r["working_mb"] for r in ok),
        "loss": ok[-1]["loss"],
    }


def _report(label, n, h, v, dtype, res, providers):
    ok = {k: r for k, r in res.items() if "time_s" in r}
    floor = ok.get("floor", {}).get("time_s")
    naive = ok.get("naive")
    liger = ok.get("liger", {}).get("time_s")
    print(f"\n  {label}: ratios (time, working memory) relative to peers")
    print(
        f"  {'provider':17s} {'time':>9s} {'mem MiB':>9s} {'t/naive':>8s} {'t/floor':>8s} "
        f"{'t/liger':>8s} {'mem/naive':>9s}"
    )
    rows = []
    for prov in providers:
        r = ok.get(prov)
        if r is None:
            continue

        def ratio(a, b):
            return a / b if (a is not None and b) else float("nan")

        tn = ratio(r["time_s"], naive and naive["time_s"])
        tf = ratio(r["time_s"], floor)
        tl = ratio(r["time_s"], liger)
        mn = (
            ratio(r["working_mb"], naive and naive["working_mb"])
            if prov != "floor"
            else float("nan")
        )
        print(
            f"  {prov:17s} {r['time_s']:9.3f} {r['working_mb']:9.0f} {tn:8.2f} {tf:8.2f} "
            f"{tl:8.2f} {mn:9.3f}"
        )
        rows.append(
            {
                "shape": label,
                "N": n,
                "H": h,
                "V": v,
                "dtype": dtype,
                "provider": prov,
                "time_s": round(r["time_s"], 4),
                "working_mb": round(r["working_mb"], 1),
                "time_vs_naive": round(tn, 3),
                "time_vs_floor": round(tf, 3),
                "time_vs_liger": round(tl, 3),
                "mem_vs_naive": round(mn, 4),
            }
        )
    for prov, r in ok.items():  # the top-p path against the plain one, same backend
        plain = ok.get(prov.replace("fused-topp:", "fused:"))
        if prov.startswith("fused-topp:") and plain:
            print(f"  top-p cost, {prov} / {prov.replace('fused-topp:', 'fused:')}: time "
                  f"{r['time_s'] / plain['time_s']:.2f}x, working memory "
                  f"{r['working_mb']:.0f} vs {plain['working_mb']:.0f} MiB")
    print()
    return rows


if __name__ == "__main__":
    main()
