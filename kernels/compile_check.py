"""Compile the Triton kernels for GPU targets on a machine without a GPU.

    python -m rgpo_fast.kernels.compile_check                 # sm_80 and sm_90, every config
    python -m rgpo_fast.kernels.compile_check --arch 90 --quick

Triton lowers a kernel to PTX and runs ptxas without a device when the target is given, so
a CPU machine can prove that every autotune configuration and flag combination of the
kernels compiles for Ampere and Hopper, and how much shared memory each needs against the
architecture's limit (a config over the limit is skipped by the autotuner at run time; a
kernel with no config that fits cannot run). The interpreter tests check the numerics; this
checks what only the GPU compiler sees (layouts, tensor-core dot shapes, resource use).

Must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the JIT).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

# Largest dynamic shared memory per block (opt-in), bytes: A100 163 KiB, H100/H200 227 KiB.
SMEM_LIMIT = {80: 166912, 90: 232448}


def _signature(fn, dtype: str, pointer_dtypes: dict[str, str], constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointer_dtypes.get(name, "*fp32")
        elif name in ("inv_temp", "clip_low", "clip_high", "clip_c", "beta", "gamma",
                      "tis_cap"):  # fmt: skip
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, arch: int, pointer_dtypes: dict[str, str], constexprs: dict,
                num_warps: int = 4, num_stages: int = 3) -> dict:
    """Compile `fn` for sm_<arch>; -> {"shared": bytes, "seconds": s} (raises on error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = _signature(fn, "", pointer_dtypes, constexprs)
    consts = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    t0 = time.perf_counter()
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": num_warps, "num_stages": num_stages})  # fmt: skip
    return {"shared": int(k.metadata.shared), "seconds": round(time.perf_counter() - t0, 2)}


def jobs(archs: list[int], quick: bool) -> list[tuple[str, object, int, dict, dict, int, int]]:
    """(label, kernel, arch, pointer dtypes, constexprs, warps, stages) to compile.

    Full: every GPU autotune config of the log-prob kernels (the 16-bit list in bf16 with
    every flag on and off, the fp32 list with flags on); the combine and policy-loss
    kernels in every flag combination. Quick: every bf16 config with flags on, the first
    fp32 config, the policy-loss kernel with every flag on."""
    import torch

    from rgpo_fast.kernels import linear_logprob as klp
    from rgpo_fast.kernels import policy_loss as kpl

    out = []
    for arch in archs:
        for dtype in ("bf16", "fp32"):
            ptrs = {"hidden_ptr": f"*{dtype}", "weight_ptr": f"*{dtype}",
                    "bias_ptr": f"*{dtype}", "targets_ptr": "*i64"}  # fmt: skip
            dot = {"UPCAST_DOT": False, "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32"}
            configs = klp.gpu_configs(torch.float32 if dtype == "fp32" else torch.bfloat16)
            if quick and dtype == "fp32":
                configs = configs[:1]
            for flags_on in (True, False) if dtype == "bf16" and not quick else (True,):
                for ci, c in enumerate(configs):
                    blocks = dict(c.kwargs)
                    fwd = {"HAS_BIAS": flags_on, "WITH_ENTROPY": flags_on,
                           "THRESHOLD": flags_on, **dot, **blocks}
                    bwd = {"HAS_BIAS": flags_on, "WITH_ENTROPY": flags_on,
                           "THRESHOLD": flags_on, "NEED_DH": True,
                           "NEED_DW": True, "NEED_DB": flags_on, **dot, **blocks}  # fmt: skip
                    tag = f"sm_{arch} {dtype} config {ci} flags {'on' if flags_on else 'off'}"
                    out.append((f"fwd {tag}", klp._logprob_fwd_kernel, arch, ptrs, fwd,
                                c.num_warps, c.num_stages))  # fmt: skip
                    out.append((f"bwd {tag}", klp._logprob_bwd_kernel, arch, ptrs, bwd,
                                c.num_warps, c.num_stages))  # fmt: skip
        for ent in (True, False):
            out.append((f"combine sm_{arch} entropy {ent}", klp._logprob_combine_kernel, arch,
                        {}, {"WITH_ENTROPY": ent, "BLOCK": 128}, 4, 3))  # fmt: skip
        flag_names = ("HAS_OLD", "HAS_OFFPOLICY", "HAS_ROLLOUT", "HAS_ENTROPY", "DUAL_CLIP")
        combos = [(True,) * 5] if quick else list(itertools.product((False, True), repeat=5))
        for combo in combos:
            for kl in ((3,) if quick else (0, 1, 2, 3)):
                flags = dict(zip(flag_names, combo), KL_KIND=kl, BLOCK=1024)
                bools = {"policy_ptr": "*u8", "off_ptr": "*u8"}
                out.append((f"policy_loss sm_{arch} {combo} kl {kl}", kpl._policy_loss_kernel,
                            arch, bools, flags, 4, 3))  # fmt: skip
    return out


def run(archs: list[int], quick: bool, verbose: bool = True) -> dict:
    """Compile every job; -> {"compiled", "failed": [..], "over_smem": [..], "fits": {..}}."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check needs a process without TRITON_INTERPRET=1")
    report = {"compiled": 0, "failed": [], "over_smem": [], "fits": {}}
    for label, fn, arch, ptrs, consts, warps, stages in jobs(archs, quick):
        try:
            r = compile_one(fn, arch, ptrs, consts, warps, stages)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none hides the rest
            report["failed"].append(f"{label}: {type(e).__name__}: {str(e)[:300]}")
            continue
        report["compiled"] += 1
        kernel = label.split()[0]
        key = f"{kernel} sm_{arch}"
        fits = r["shared"] <= SMEM_LIMIT[arch]
        report["fits"][key] = report["fits"].get(key, False) or fits
        if not fits:
            report["over_smem"].append(f"{label}: {r['shared']} B > {SMEM_LIMIT[arch]} B")
        if verbose:
            print(f"{label:60s} shared {r['shared']:7d} B  {r['seconds']:5.1f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="80,90", help="comma list of SM versions (80, 90)")
    p.add_argument("--quick", action="store_true", help="fewer flag combinations")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = p.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    bad = [a for a in archs if a not in SMEM_LIMIT]
    if bad:
        print(f"error: unknown arch {bad[0]}; valid: {', '.join(map(str, SMEM_LIMIT))}",
              file=sys.stderr)  # fmt: skip
        return 2
    report = run(archs, args.quick, verbose=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"compiled {report['compiled']}, failed {len(report['failed'])}, "
              f"over the shared-memory limit {len(report['over_smem'])}")  # fmt: skip
        for line in report["failed"] + report["over_smem"]:
            print("  " + line)
    ok = not report["failed"] and all(report["fits"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
