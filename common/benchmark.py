"""Rerunnable benchmarks (not part of the test run).

    python -m common.benchmark slicewise --bundle transunet_btcv [--ckpt models/model.pt] [--out bench/]

``slicewise``: for a 2D bundle, on the same weights and the same volumes (the real CT sample in
``../shared/data`` when present, and a BTCV-size phantom, 512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm), time the
batched slice-wise inference (full precision and, on CPU, the bf16 switch) against the papers' per-slice
reference path, from the preprocessed volume to the written label file, and report seconds per volume,
the speed-up, the share of time outside the network's forward passes (resizing, stacking, argmax,
inversion, writing), the peak memory during each path, and the voxel agreement of the label maps.

Every figure is measured in the run that prints it; results go to ``<out>/slicewise_<bundle>.md`` and
``.json`` with the machine, thread count and library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write_text

__all__ = ["PeakMemory", "machine_info", "slicewise_benchmark", "main"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = REPO.parent / "shared" / "data" / "abdomen_ct_sample" / "image.nii.gz"


class PeakMemory:
    """Peak resident memory (and peak CUDA memory) while the ``with`` block runs, above its start.

    CPU: a thread samples ``VmRSS`` from ``/proc/self/status`` every 10 ms (torch's CPU allocations are
    invisible to ``tracemalloc``). CUDA: ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, device: torch.device | None = None, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak_rss_mb = 0.0
        self.peak_cuda_mb = None

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def __enter__(self):
        self._base = self.rss_mb()
        self._peak = self._base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, self.rss_mb())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss_mb())
        self.peak_rss_mb = self._peak - self._base
        if self.device is not None and self.device.type == "cuda":
            self.peak_cuda_mb = (torch.cuda.max_memory_allocated(self.device) - self._cuda_base) / 2**20
        return False


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    import monai

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _bundle_parser(bundle: str, overrides: dict):
    from monai.bundle import ConfigParser

    cfg = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config(str(cfg / "inference.json"))
    parser.read_meta(str(cfg / "metadata.json"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _btcv_phantom(path: Path) -> Path:
    from .io import atomic_write_bytes, nifti_bytes
    from .phantom import BTCV_SHAPE, BTCV_SPACING, make_phantom

    if not path.exists():
        ph = make_phantom(seed=2024, shape=BTCV_SHAPE, spacing=BTCV_SPACING)
        atomic_write_bytes(path, nifti_bytes(ph.image, ph.affine))
    return path


def slicewise_benchmark(
    bundle: str,
    ckpt: str | None = None,
    volumes: list[str] | None = None,
    out_dir: str = "bench",
    slice_batch: int = 16,
    autocast: str | None = "auto",
    device: str | None = None,
    overrides: dict | None = None,
    reference: bool = True,
) -> dict:
    """Time batched vs reference slice-wise inference of a 2D bundle; see the module docstring."""
    from monai.data import decollate_batch
    from monai.transforms import Compose

    dev = torch.device(device) if device else (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    parser = _bundle_parser(bundle, dict(overrides or {}))
    net = parser.get_parsed_content("network_def")
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        weights = f"checkpoint {ckpt}"
    else:
        weights = "random initialisation (seed 0): timings are weight-independent; agreement needs trained weights"
    net = net.to(dev).eval()
    img_size = tuple(net.slice_roi)
    pre = parser.get_parsed_content("preprocessing")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if not volumes:
        volumes = []
        if DEFAULT_SAMPLE.is_file():
            volumes.append(str(DEFAULT_SAMPLE))
        volumes.append(str(_btcv_phantom(Path(out_dir) / "btcv_size_phantom.nii.gz")))
    if autocast == "auto":
        autocast = "bf16" if dev.type == "cpu" else "fp16"
    paths = [("batched", "batched", None)]
    if autocast and autocast != "fp32":
        paths.append((f"batched+{autocast}", "batched", autocast))
    if reference:
        paths.append(("reference", "reference", None))

    rows = []
    for vol_path in volumes:
        t0 = time.perf_counter()
        data = pre({"image": vol_path})
        t_pre = time.perf_counter() - t0
        image = data["image"]
        shape = tuple(int(s) for s in image.shape[1:])
        labels: dict[str, np.ndarray] = {}
        for name, mode, ac in paths:
            net.slice_mode, net.slice_batch, net.slice_autocast = mode, slice_batch, ac
            post = Compose(
                [
                    _argmax(),
                    _invert(pre),
                    _saver(str(work / name)),
                ]
            )
            with PeakMemory(dev) as mem:
                t0 = time.perf_counter()
                x = image.unsqueeze(0).to(dev)
                with torch.no_grad():
                    pred = net(x)
                t_inf = time.perf_counter() - t0
                t1 = time.perf_counter()
                item = decollate_batch({"image": x, "pred": pred})[0]
                item["image"] = image
                out = post(item)
                t_post = time.perf_counter() - t1
            labels[name] = np.asarray(out["pred"].cpu())[0].astype(np.uint8)
            total = t_pre + t_inf + t_post
            rows.append({
                "volume": os.path.basename(vol_path), "shape": shape, "path": name,
                "seconds": total, "preprocess_s": t_pre, "inference_s": t_inf, "forward_s": net.forward_seconds,
                "postprocess_s": t_post, "outside_forward_share": (total - net.forward_seconds) / total,
                "peak_rss_mb": mem.peak_rss_mb, "peak_cuda_mb": mem.peak_cuda_mb,
            })  # fmt: skip
            del pred, out
        ref = labels.get("reference")
        for r in rows:
            if r["volume"] != os.path.basename(vol_path):
                continue
            base = next(x for x in rows if x["volume"] == r["volume"] and x["path"] == "reference") if ref is not None else None
            r["speedup_vs_reference"] = base["seconds"] / r["seconds"] if base else None
            r["agreement_vs_reference"] = float((labels[r["path"]] == ref).mean()) if ref is not None else None
            r["agreement_vs_batched_fp32"] = float((labels[r["path"]] == labels["batched"]).mean())
    result = {
        "benchmark": "slicewise", "bundle": bundle, "weights": weights, "slice_batch": slice_batch,
        "img_size": list(img_size), "machine": machine_info(dev), "rows": rows,
    }  # fmt: skip
    _write(result, Path(out_dir) / f"slicewise_{bundle}", _slicewise_markdown(result))
    return result


def _argmax():
    from monai.transforms import AsDiscreted

    return AsDiscreted(keys="pred", argmax=True)


def _invert(pre):
    from monai.transforms import Invertd

    return Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)


def _saver(folder: str):
    from monai.transforms import SaveImaged

    from .io import AtomicNibabelWriter

    return SaveImaged(keys="pred", output_dir=folder, output_postfix="seg", output_dtype=np.uint8,
                      separate_folder=False, resample=False, print_log=False, writer=AtomicNibabelWriter)  # fmt: skip


def _fmt(v, nd=2):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def _slicewise_markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Slice-wise inference benchmark: {res['bundle']}",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']}), device {m['device']}"
        + (f", GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "")
        + f"; torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}.",
        f"Weights: {res['weights']}. Network input {res['img_size'][0]} x {res['img_size'][1]}, "
        f"batched path {res['slice_batch']} slices per forward.",
        "",
        "| volume | shape | path | s / volume | speed-up vs reference | forward s | outside forward | peak RAM MB | peak GPU MB | agreement vs reference | agreement vs batched fp32 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['volume']} | {'x'.join(map(str, r['shape']))} | {r['path']} | {_fmt(r['seconds'])} | "
            f"{_fmt(r.get('speedup_vs_reference'))} | {_fmt(r['forward_s'])} | {_fmt(100 * r['outside_forward_share'], 1)}% | "
            f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['peak_cuda_mb'], 0)} | "
            f"{_fmt(100 * r['agreement_vs_reference'], 2) + '%' if r.get('agreement_vs_reference') is not None else '-'} | "
            f"{_fmt(100 * r['agreement_vs_batched_fp32'], 2)}% |"
        )
    lines += ["", "Seconds per volume from the CT file to the written label file: loading and preprocessing (RAS, "
              "HU window; the same for every path), the network over all slices, argmax, inversion to the input "
              "grid and writing. 'outside forward' is the share of that time not spent in the network's forward "
              "passes. Peak RAM is the resident-memory peak above the start of each path."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _write(result: dict, stem: Path, markdown: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"written: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.benchmark", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slicewise", help="batched vs reference slice-wise inference of a 2D bundle")
    s.add_argument("--bundle", required=True)
    s.add_argument("--ckpt", default=None, help="trained weights (model.pt); default: random initialisation")
    s.add_argument("--volume", action="append", default=None, help="CT file(s); default: the real sample + a BTCV-size phantom")
    s.add_argument("--out", default="bench")
    s.add_argument("--slice-batch", type=int, default=16)
    s.add_argument("--autocast", default="auto", help="reduced-precision switch timed beside fp32: auto (bf16 on CPU, fp16 on GPU), bf16, fp16, fp32 (none)")
    s.add_argument("--device", default=None)
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    s.add_argument("--no-reference", action="store_true")
    s.add_argument("--override", action="append", default=[], help="config override key=json, e.g. img_size=[96,96]")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    if args.cmd == "slicewise":
        slicewise_benchmark(args.bundle, args.ckpt, args.volume, args.out, args.slice_batch, args.autocast,
                            args.device, overrides, reference=not args.no_reference)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
