"""The ``efficiency`` part: the machine's own peak in the same run (a large matrix product and a 3D convolution, in fp32
and in bf16 on a CPU / fp16 on a GPU) and each network's forward on one inference batch (3D: ``sw_batch_size``
windows; 2D: ``slice_batch`` slices): FLOPs (torch's counter), achieved GFLOP/s, share of the peak, and where the
reduced-precision forward's time goes (torch's profiler)."""

from __future__ import annotations

import time

import torch

from .core import Bundle, Context, best_seconds, fmt, precisions, share, sync, table

__all__ = ["NAME", "measure", "section"]

NAME = "efficiency"


def measure(ctx: Context, b: Bundle) -> None:
    if "peak" not in ctx.result:
        ctx.result["peak"] = machine_peak(ctx.dev, ctx.smoke)
    ctx.result["efficiency"] += forwards(b, ctx.result["peak"], compile=ctx.compile)


def machine_peak(dev: torch.device, smoke: bool = False, repeats: int = 3) -> dict:
    """The machine's own peak, in GFLOP/s, per precision: a large matrix product and a 3D convolution."""
    n = 256 if smoke else 4096
    side, ch = (8, 8) if smoke else (48, 64)
    peak = {}
    for name, dtype in precisions(dev):
        t = dtype or torch.float32
        a, b = torch.randn(n, n, device=dev, dtype=t), torch.randn(n, n, device=dev, dtype=t)
        x = torch.randn(1, ch, side, side, side, device=dev, dtype=t)
        conv = torch.nn.Conv3d(ch, ch, 3, padding=1, bias=False).to(dev, t)
        with torch.no_grad():
            mm = best_seconds(lambda: (torch.matmul(a, b), sync(dev)), repeats)
            cv = best_seconds(lambda: (conv(x), sync(dev)), repeats)
        peak[name] = {
            "matmul_gflops": 2 * n**3 / mm / 1e9,
            "conv3d_gflops": 2 * ch * ch * 27 * side**3 / cv / 1e9,
        }
        peak[name]["peak_gflops"] = max(peak[name]["matmul_gflops"], peak[name]["conv3d_gflops"])
    return peak


def forwards(b: "Bundle", peak: dict, repeats: int = 3, compile: bool = True) -> list[dict]:
    """The bundle network's forward on one inference batch (3D: ``sw_batch_size`` windows of ``roi_size``; 2D:
    ``slice_batch`` slices of ``img_size``): its FLOPs (torch's counter), achieved GFLOP/s per precision and the
    share of the machine's peak in that precision; with ``compile``, also the reduced-precision forward through
    the bundles' ``compile`` switch (:func:`common.inference.compiled_forward`), with its compile time."""
    from torch.utils.flop_counter import FlopCounterMode

    from ...inference import compiled_forward

    parser = b.parser()
    net = b.network(parser)
    if b.kind == "3d":
        x = torch.rand(int(parser["sw_batch_size"]), 1, *[int(r) for r in parser["roi_size"]], device=b.dev)
    else:
        batch = int(parser.get_parsed_content("slice_batch"))
        x = torch.rand(batch, 1, *[int(r) for r in parser["img_size"]], device=b.dev)  # the 2D network itself
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    flops = counter.get_total_flops()
    op_flops = {str(op).split(".")[1]: int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    rows = []
    paths = [(name, dtype, False) for name, dtype in precisions(b.dev)]
    if compile:
        paths.append((paths[-1][0], paths[-1][1], True))
    for name, dtype, compiled in paths:
        fn = compiled_forward(net, x.shape[0]) if compiled else net

        def forward():
            with torch.no_grad(), torch.autocast(b.dev.type, dtype=dtype, enabled=dtype is not None):
                fn(x)
            sync(b.dev)

        compile_s = None
        if compiled:
            t = time.perf_counter()
            forward()  # compiles
            compile_s = time.perf_counter() - t
        seconds = best_seconds(forward, repeats)
        achieved = flops / seconds / 1e9
        rows.append(
            {
                "bundle": b.name,
                "precision": name + (" + compile" if compiled else ""),
                "input_shape": list(x.shape),
                "gflop": flops / 1e9,
                "seconds": seconds,
                "gflops": achieved,
                "share_of_peak": achieved / peak[name]["peak_gflops"],
                "compile_s": compile_s,
                # the compiled graph's kernels are not the eager operators the FLOPs are counted on
                "profile": None
                if compiled
                else _operator_profile(forward, op_flops, seconds, peak[name]["peak_gflops"], b.dev),
            }
        )
        print(
            f"  {b.name} | forward {rows[-1]['precision']}: {flops / 1e9:.1f} GFLOP in {seconds:.3f} s, "
            f"{achieved:.0f} GFLOP/s" + (f" (compiled in {compile_s:.0f} s)" if compiled else ""),
            flush=True,
        )
    return rows


def _operator_profile(forward, op_flops: dict[str, int], seconds: float, peak_gflops: float, dev) -> list[dict]:
    """Where one forward's time goes (torch's profiler): each operator that does the counted FLOPs (convolution,
    matrix products, attention) with its share of the forward's time and its own GFLOP/s and share of the peak,
    then the other operators by their own time. Shares are of the profiled forward (the profiler adds some
    overhead); GFLOP/s are scaled to the unprofiled forward's time ``seconds``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        forward()
    cuda = dev.type == "cuda"
    flop_names = {f"aten::{op}" for op in op_flops}

    def under_flop_op(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name in flop_names:
                return True
            p = p.cpu_parent
        return False

    inside: dict[str, list] = {}  # FLOP operator -> [calls, inclusive time]
    outside: dict[str, list] = {}  # any other operator outside them -> [calls, own time]
    whole = 0.0
    for e in prof.events():
        own = e.self_device_time_total if cuda else e.self_cpu_time_total
        whole += own
        if under_flop_op(e):
            continue
        if e.name in flop_names:
            acc = inside.setdefault(e.name, [0, 0.0])
            acc[0], acc[1] = acc[0] + 1, acc[1] + (e.device_time_total if cuda else e.cpu_time_total)
        else:
            acc = outside.setdefault(e.name, [0, 0.0])
            acc[0], acc[1] = acc[0] + 1, acc[1] + own
    whole = whole or 1.0
    rows = []
    for name, (calls, t) in sorted(inside.items(), key=lambda kv: -kv[1][1]):
        share = t / whole
        gflops = op_flops[name.split("::")[-1]] / (share * seconds) / 1e9 if share > 0 else None
        rows.append(
            {
                "operator": name,
                "calls": calls,
                "share": share,
                "gflops": gflops,
                "share_of_peak": None if gflops is None else gflops / peak_gflops,
            }
        )
    top = sorted(outside.items(), key=lambda kv: -kv[1][1])
    rows.append(
        {
            "operator": "other operators: "
            + ", ".join(f"{n.replace('aten::', '')} {100 * t / whole:.0f}%" for n, (_, t) in top[:4]),
            "calls": sum(c for c, _ in outside.values()),
            "share": sum(t for _, t in outside.values()) / whole,
            "gflops": None,
            "share_of_peak": None,
        }
    )
    return rows


def section(res: dict) -> list[str] | None:
    if not res.get("peak"):
        return None
    out = table(
        "Forward efficiency against the machine's own peak",
        ["bundle", "precision", "input", ">GFLOP", ">s", ">GFLOP/s", ">share of peak", ">compile s"],
        [
            [
                r["bundle"],
                r["precision"],
                "x".join(map(str, r["input_shape"])),
                fmt(r["gflop"], 1),
                fmt(r["seconds"], 3),
                fmt(r["gflops"], 0),
                share(r["share_of_peak"]),
                fmt(r.get("compile_s"), 0),
            ]
            for r in res.get("efficiency", [])
        ],
    )
    peak = ", ".join(
        f"{p}: matrix product {fmt(v['matmul_gflops'], 0)}, 3D convolution {fmt(v['conv3d_gflops'], 0)} GFLOP/s"
        for p, v in res["peak"].items()
    )
    out += ["", f"Peak of this machine in the same run ({peak}); the share is against the larger of the two."]
    profiled = [r for r in res.get("efficiency", []) if r.get("profile")]  # eager forwards
    # the reduced-precision forwards where they ran, else (a CPU without bf16 instructions) the fp32 ones
    fast = [r for r in profiled if r["precision"] != "fp32"] or profiled
    if fast:
        out += table(
            f"Where the {fast[0]['precision']} forward's time goes (torch profiler, one forward)",
            ["bundle", "operator", ">calls", ">share of forward", ">GFLOP/s", ">share of peak"],
            [
                [
                    r["bundle"],
                    p["operator"],
                    p["calls"],
                    share(p["share"]),
                    fmt(p["gflops"], 0),
                    share(p["share_of_peak"]),
                ]
                for r in fast
                for p in r["profile"]
            ],
        )
        out += [
            "",
            "A network under 60 % of the peak spends its time outside its FLOP operators (normalisation, "
            "activations, softmax, copies and layout changes: the last row of each bundle) or runs them below the "
            "peak (small or thin matrix products, depthwise convolutions).",
        ]
    return out
