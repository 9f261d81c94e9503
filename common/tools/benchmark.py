"""Benchmark suite for every bundle: end-to-end inference, training throughput, scaling (not part of the tests).

    python -m common.tools.benchmark [--bundle unetr_btcv ...] [--parts inference,training,scaling] [--out bench]
    python -m common.tools.benchmark --smoke --out /tmp/bench      # tiny inputs: checks the suite, figures meaningless

In one run on one machine, for each bundle:

- **Efficiency** (``efficiency``): the machine's own peak in the same run (a 4096^2 matrix product and a 3D
  convolution, in fp32 and in bf16 on a CPU / fp16 on a GPU) and each network's forward on one inference batch
  (3D: ``sw_batch_size`` windows; 2D: ``slice_batch`` slices): FLOPs (torch's counter), achieved GFLOP/s and the
  share of the peak.
- **Inference end to end** on the real CT sample of ``../shared/data`` (when present) and a BTCV-size CT phantom
  (512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm), from the file to
  the written label file, split into load / preprocess / network / postprocess / write, with peak RAM (and
  peak GPU memory on CUDA). Every path is the bundle's own ``inference.json`` with switches set
  (:func:`variants`): the baseline is the model-zoo recipe for 3D bundles (CPU transforms, fp32, softmax
  probabilities inverted with bilinear interpolation before the argmax, stitching on the input's device) and
  the papers' per-slice path for 2D bundles. Each path reports its speed-up over the baseline and the share
  of voxels whose label agrees with the baseline's.
- **Training throughput** of the bundle's own step (network, loss, optimizer; AMP on CUDA) at its default
  batch and crop settings, with the time waiting for data separated from the model step: the bundle's
  pipeline (cached deterministic transforms, random transforms per sample) against a plain ``DataLoader``
  with all transforms on the CPU per sample (3D: ``monai.data.Dataset``; 2D: the papers' one file per slice,
  zoomed with SciPy per sample).
- **MT-UNet module stages** (``mtm``): each official mixed-transformer-module stage, the vectorised form of the
  network against the loop reference kept in the tests.
- **Dataset** (``dataset``): the bundle's own inference (``evaluator.run()``, its DataLoader with worker processes)
  on a folder of three BTCV-size phantoms, default path and reduced precision: seconds per volume and the share
  of the wall time outside the forward passes, with loading overlapped by the workers as in real use.
- **Fitted** (``fitted``, not in the default parts: it trains): the demo's network (``configs/demo.json``) trained
  on the real CT sample itself through the bundle's own ``train.json`` (``--fit-epochs``, :data:`FIT_EPOCHS` by
  default), then every inference path on that CT with those weights. The demos learn on generated phantoms,
  so on the real CT they predict fragments; weights fitted to the CT predict organ-shaped labels, as a model
  trained on BTCV would, and the agreement of the paths is measured on such a prediction (with its Dice against
  the CT's labels). The weights are kept in ``<out>/fitted/<bundle>/model.pt`` and reused by later runs with
  the same settings (another epoch count, override or CT fits again).
- **Levers** (``levers``, not in the default parts: it trains when weights are missing): what test-time
  augmentation, connected-component cleanup and ensembles do to mean Dice, HD95 and time, on demo-trained and
  fitted weights (``common.tools.levers``).
- **Scaling**: the fastest path at three volume sizes (256 x 256 x 80, 512 x 512 x 150, 512 x 512 x 300 at
  the BTCV spacing, so the field of view grows): seconds, peak memory, and where sliding-window outputs were
  stitched (``stitch="auto"`` moves it to the CPU when the GPU would run out).

Weights: ``--ckpt bundle=path``, else the bundle's demo checkpoint (``bundles/<b>/demo/models/model.pt``) when
it fits the bundle's network, else random (timings do not depend on weights; agreement figures do, and say
which were used). The ``agreement`` part times the paths on the demo's trained network, on the same volumes, to
give each switch's agreement on trained weights: in the demo's configuration where the demo trained a reduced
network (every ``demo.json`` but Swin-Unet's), else in the bundle's own.
Results: ``<out>/suite.md`` and ``<out>/suite.json`` with the machine, thread count, library versions, date and
command; ``--doc docs/benchmarks.md`` also makes the report the collection's speed document (the bundle docs link
to it and hold no timings of their own).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..bundle import bundle_parser
from ..io import atomic_write_text
from ..weights import load_weights
from .levers import ensemble_rows, levers_part, levers_table
from .per_slice import per_slice

__all__ = ["PeakMemory", "machine_info", "variants", "suite", "suite_markdown", "main"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLE = REPO.parent / "shared" / "data" / "abdomen_ct_sample" / "image.nii.gz"


class PeakMemory:
    """Peak resident memory of the process (and peak CUDA memory) while the ``with`` block runs.

    CPU: the kernel's high-water mark ``VmHWM`` is reset at the start (``/proc/self/clear_refs``) and read at
    the end, so ``peak_rss_mb`` is the process's largest resident size during the block (what the machine
    must hold, model and buffers included); where that reset is unavailable a thread samples ``VmRSS``
    every 10 ms instead (torch's CPU allocations are invisible to ``tracemalloc``). ``start_rss_mb`` is the
    resident size at the start. CUDA: ``torch.cuda.max_memory_allocated`` (absolute, reset at the start).
    """

    def __init__(self, device: torch.device | None = None, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak_rss_mb = 0.0
        self.start_rss_mb = 0.0
        self.peak_cuda_mb = None

    @staticmethod
    def _status(field: str) -> float | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    @classmethod
    def rss_mb(cls) -> float:
        v = cls._status("VmRSS")
        if v is not None:
            return v
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def __enter__(self):
        self.start_rss_mb = self.rss_mb()
        self._peak = self.start_rss_mb
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current resident size
            self._hwm = self._status("VmHWM") is not None
        except OSError:
            self._hwm = False
        self._stop = threading.Event()
        self._thread = None
        if not self._hwm:  # the kernel's high-water mark is exact; sample only without it

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, self.rss_mb())
                    time.sleep(self.interval)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self.rss_mb())
        hwm = self._status("VmHWM") if self._hwm else None
        self.peak_rss_mb = max(self._peak, hwm or 0.0)
        if self.device is not None and self.device.type == "cuda":
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
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


STAGES = ("load", "preprocess", "network", "postprocess", "write")
FIT_EPOCHS = 30  # the fitted part's training length (epochs of the demo's slices_per_epoch / crops)
LOAD_STAGE = ("LoadCheckedImaged", "LoadImaged", "EnsureChannelFirstd", "CheckInputd")

# Sizes of the scaling part (voxels) at the BTCV spacing 0.8 x 0.8 x 2.5 mm: the field of view grows with them.
SIZES = {"small": (256, 256, 80), "btcv": (512, 512, 150), "large": (512, 512, 300)}
SMOKE_SIZES = {"small": (48, 48, 20), "btcv": (64, 64, 28), "large": (64, 64, 40)}
SMOKE_SPACING = (6.0, 6.0, 10.0)  # the tiny phantoms still cover a whole abdomen


def _fast_precision(dev: torch.device) -> str:
    return "bf16" if dev.type == "cpu" else "fp16"


def variants(kind: str, dev: torch.device, compile: bool = True) -> list[tuple[str, dict]]:
    """The inference paths timed for a bundle: the baseline first, then the switches (config overrides).

    3D: the model-zoo recipe (fp32, softmax probabilities inverted with bilinear interpolation before the argmax,
    stitching on the input's device, the window attention of the Swin networks written out rather than
    ``scaled_dot_product_attention``), then label inversion alone, then label inversion with reduced precision.
    2D: the papers' per-slice path (attention written out too), then the batched slice-wise path, alone and with
    the papers' resizing order (argmax at the network size, nearest zoom of the labels), then both with reduced
    precision; last (unless ``compile`` is false), the fastest of them through ``torch.compile`` (its compile time
    is in the warm-up, not the total). A switch a bundle's config does not have (``flash_attention`` outside the Swin bundles) is left out by
    :meth:`_Bundle.applicable`.
    """
    fast = _fast_precision(dev)
    if kind == "3d":
        paths = [
            (
                "baseline: model zoo",
                {"autocast": None, "invert": "probabilities", "stitch": "device", "flash_attention": False},
            ),
            ("invert labels", {"autocast": None, "invert": "labels", "stitch": "auto"}),
            (f"invert labels + {fast}", {"autocast": fast, "invert": "labels", "stitch": "auto"}),
            (
                f"invert labels + {fast} + compile",
                {"autocast": fast, "invert": "labels", "stitch": "auto", "compile": True},
            ),
        ]
    else:
        paths = [
            (
                "baseline: per-slice",
                {"per_slice": True, "autocast": None, "slice_resize": "logits", "flash_attention": False},
            ),
            ("batched", {"autocast": None, "slice_resize": "logits"}),
            ("batched + label resize", {"autocast": None, "slice_resize": "labels"}),
            (f"batched + {fast}", {"autocast": fast, "slice_resize": "logits"}),
            (f"batched + {fast} + label resize", {"autocast": fast, "slice_resize": "labels"}),
            (
                f"batched + {fast} + label resize + compile",
                {"autocast": fast, "slice_resize": "labels", "compile": True},
            ),
        ]
    return [p for p in paths if compile or not p[1].get("compile")]


def _bundle_kind(config: dict) -> str:
    return "2d" if "slice_batch" in config else "3d"


def _phantom_file(folder: Path, shape, seed: int, with_label: bool = False, spacing=None) -> dict:
    """A phantom CT (and label) of ``shape`` (at the BTCV spacing by default), generated once into ``folder``."""
    from ..io import atomic_write_bytes, nifti_bytes
    from ..phantom import BTCV_SPACING, make_phantom

    spacing = tuple(spacing or BTCV_SPACING)
    stem = f"phantom_{'x'.join(map(str, shape))}_{'x'.join(f'{s:g}' for s in spacing)}_s{seed}"
    img, lab = folder / f"{stem}.nii.gz", folder / f"{stem}_label.nii.gz"
    if not img.exists() or (with_label and not lab.exists()):
        ph = make_phantom(seed=seed, shape=tuple(shape), spacing=spacing)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(lab, nifti_bytes(ph.label, ph.affine))
        atomic_write_bytes(img, nifti_bytes(ph.image, ph.affine))
    return {"image": str(img), "label": str(lab)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Bundle:
    """One bundle's configs, weights and device, building each inference path from ``inference.json``."""

    def __init__(self, bundle: str, ckpt: str | None, dev: torch.device, overrides: dict, configs=()):
        self.name, self.dev, self.overrides, self.configs = bundle, dev, dict(overrides), list(configs)
        config = bundle_parser(bundle, self.overrides, extra=self.configs).config
        self.kind = _bundle_kind(config)
        self.keys = frozenset(config)  # the inference config's top-level ids (with the extra configs), read once
        self.num_classes = int(config["num_classes"])
        self.ckpt = ckpt

    def applicable(self, switches: dict) -> dict:
        """The switches this bundle's inference config has (the others would be unused keys); ``per_slice`` (the
        papers' loop, :mod:`common.tools.per_slice`) is the benchmark's own."""
        return {k: v for k, v in switches.items() if k in self.keys or k == "per_slice"}

    def parser(self, extra: dict | None = None, output_dir: str | None = None):
        p = bundle_parser(self.name, {**self.overrides, **(extra or {})}, extra=self.configs)
        if output_dir:
            p["output_dir"] = output_dir
        return p

    def network(self, parser):
        torch.manual_seed(0)  # without a checkpoint, every path gets the same random weights
        net = parser.get_parsed_content("network_def")
        if self.ckpt:
            load_weights(net, self.ckpt, purpose="inference")
        if hasattr(net, "time_forwards"):  # the 2D networks time their forward passes when asked
            net.time_forwards = True
        return net.to(self.dev).eval()

    def warm_up(self, parser, net, inferer) -> None:
        with torch.no_grad():
            if self.kind == "3d":
                inferer(torch.zeros(1, 1, *parser["roi_size"], device=self.dev), net)
            else:
                net(torch.zeros(1, 1, 64, 64, 2, device=self.dev))
        _sync(self.dev)

    def infer(self, volume: str, switches: dict, out_dir: Path) -> dict:
        """One volume, file to written label file, through the bundle's own transforms; stage times in seconds."""
        from monai.data import decollate_batch
        from monai.transforms import Compose, SaveImaged

        overrides = dict(switches)
        loop = overrides.pop("per_slice", False)
        parser = self.parser(overrides, str(out_dir))
        net, inferer = self.network(parser), parser.get_parsed_content("inferer")
        if loop:
            net = per_slice(net)
        pre = parser.get_parsed_content("preprocessing")
        post = list(parser.get_parsed_content("postprocessing").transforms)
        ts = list(pre.transforms)
        n_load = next((i for i, t in enumerate(ts) if type(t).__name__ not in LOAD_STAGE), len(ts))
        load, rest = Compose(ts[:n_load]), Compose(ts[n_load:])
        write = [t for t in post if isinstance(t, SaveImaged)]
        post = [t for t in post if not isinstance(t, SaveImaged)]
        t = time.perf_counter()
        self.warm_up(parser, net, inferer)  # compiles, on the + compile paths
        warm_up = time.perf_counter() - t
        times = {}
        with PeakMemory(self.dev) as mem:
            t = time.perf_counter()
            d = load({"image": volume})
            times["load"] = time.perf_counter() - t
            t = time.perf_counter()
            d = rest(d)
            x = d["image"].unsqueeze(0).to(self.dev)
            _sync(self.dev)
            times["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad():
                pred = inferer(x, net)
            _sync(self.dev)
            times["network"] = time.perf_counter() - t
            t = time.perf_counter()
            item = decollate_batch({"image": x, "pred": pred})[0]
            item["image"] = d["image"]
            del pred
            item = Compose(post)(item)
            times["postprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            item = Compose(write)(item)
            times["write"] = time.perf_counter() - t
        files = sorted(out_dir.glob("*.nii.gz"))
        fwd = getattr(net, "forward_seconds", None)  # the 2D networks time their forward passes
        total = sum(times.values())
        return {
            "forward_s": fwd,
            "outside_forward_share": (total - fwd) / total if fwd is not None else None,
            # the 2D machinery: resizing, argmax, stacking (network stage less the forwards), inversion, writing
            "machinery_share": (times["network"] - fwd + times["postprocess"] + times["write"]) / total
            if fwd is not None
            else None,
            "shape": [int(s) for s in d["image"].shape[1:]],
            "stages_s": times,
            "seconds": sum(times.values()),
            "warm_up_s": warm_up,
            "peak_rss_mb": mem.peak_rss_mb,
            "peak_cuda_mb": mem.peak_cuda_mb,
            "stitching": getattr(inferer, "last_stitch_device", None),
            "label_file": str(files[-1]) if files else None,
        }


def _fits(b: _Bundle, ckpt: str) -> bool:
    """Whether ``ckpt`` loads into the bundle's (full-size) network."""
    try:
        load_weights(b.parser().get_parsed_content("network_def"), ckpt, purpose="inference")
    except Exception:  # a checkpoint of another configuration: shapes or keys differ
        return False
    return True


def _agreement(a: str, b: str) -> float:
    import nibabel as nib

    x, y = np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)
    return float((x == y).mean())


def _inference_part(
    b: _Bundle, volumes: list[str], work: Path, only: tuple[int, ...] | None = None, compile: bool = True
) -> list[dict]:
    rows = []
    for v, volume in enumerate(volumes):
        mine = []
        for i, (name, switches) in enumerate(variants(b.kind, b.dev, compile)):
            if only is not None and i != 0 and i not in only:
                continue
            switches = b.applicable(switches)
            r = b.infer(volume, switches, work / b.name / f"volume{v}_variant{i}")
            r.update({"bundle": b.name, "volume": Path(volume).name, "variant": name, "switches": switches})
            mine.append(r)
            print(f"  {b.name} | {r['volume']} | {name}: {r['seconds']:.1f} s", flush=True)
        base = mine[0]
        for r in mine:
            r["speedup_vs_baseline"] = base["seconds"] / r["seconds"]
            r["agreement_vs_baseline"] = _agreement(base["label_file"], r["label_file"])
        # how fragmented the baseline's prediction is: the agreement of the paths depends on it
        base["prediction_geometry"] = _label_geometry(base["label_file"], b.num_classes)
        rows += mine
    return rows


def _dataset_part(b: _Bundle, files: list[str], work: Path, compile: bool = True) -> list[dict]:
    """The bundle's own inference (``evaluator.run()``: its DataLoader with worker processes, which load and
    preprocess the next volumes while the network runs) on a folder of ``files``, for its default path and
    with reduced precision: seconds per volume and the share of the wall time outside the forward passes."""
    folder = work / b.name / "dataset_in"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        link = folder / f"case{i:02d}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(f).resolve())
    rows = []
    for i, (name, switches) in enumerate(variants(b.kind, b.dev, compile)):
        if i == 0 or switches.get("slice_resize") == "labels":
            continue  # the bundle's resizing order, in full and in reduced precision
        out_dir = work / b.name / f"dataset_out{i}"
        parser = b.parser({**b.applicable(switches), "dataset_dir": str(folder), "load_pretrain": False}, str(out_dir))
        net = b.network(parser)  # the network of the evaluator (parsed once), with the benchmark's weights
        evaluator = parser.get_parsed_content("evaluator")
        forwards: list[float] = []
        if hasattr(net, "forward_seconds"):
            from ignite.engine import Events

            evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: forwards.append(net.forward_seconds))
        b.warm_up(parser, net, parser.get_parsed_content("inferer"))
        with PeakMemory(b.dev) as mem:
            t = time.perf_counter()
            evaluator.run()
            _sync(b.dev)
            total = time.perf_counter() - t
        written = sorted(out_dir.glob("*.nii.gz"))
        if len(written) != len(files):
            raise RuntimeError(f"{b.name}: the bundle's inference wrote {len(written)} of {len(files)} label files")
        r = {
            "bundle": b.name,
            "variant": name,
            "switches": switches,
            "volumes": len(files),
            "num_workers": parser["num_workers"],
            "seconds": total,
            "seconds_per_volume": total / len(files),
            "forward_s": sum(forwards) if forwards else None,
            "outside_forward_share": 1.0 - sum(forwards) / total if forwards else None,
            "peak_rss_mb": mem.peak_rss_mb,
            "peak_cuda_mb": mem.peak_cuda_mb,
        }
        rows.append(r)
        print(f"  {b.name} | dataset of {len(files)} | {name}: {r['seconds_per_volume']:.1f} s per volume", flush=True)
    return rows


def _dice_vs_labels(pred_file: str, label_file: str, num_classes: int) -> tuple[float, dict[int, float]]:
    """Dice of a written label map against a label file for every class present in either, and their mean."""
    import nibabel as nib

    from ..metrics import dice

    p, g = np.asarray(nib.load(pred_file).dataobj), np.asarray(nib.load(label_file).dataobj)
    scores = {c: dice(p == c, g == c) for c in range(1, num_classes)}
    scores = {c: v for c, v in scores.items() if not np.isnan(v)}  # NaN: the class is in neither
    return (float(np.mean(list(scores.values()))) if scores else float("nan")), scores


def _label_geometry(label_file: str, num_classes: int) -> dict:
    """How fragmented a label map is: connected components summed over the organs (26-connectivity in 3D), and
    the share of voxels on an in-plane label boundary (a neighbour along x or y with another label)."""
    import nibabel as nib
    from scipy import ndimage

    lab = np.asarray(nib.load(label_file).dataobj)
    components = sum(int(ndimage.label(lab == c, structure=np.ones((3, 3, 3)))[1]) for c in range(1, num_classes))
    edge = np.zeros(lab.shape, dtype=bool)
    for axis in (0, 1):
        d = np.diff(lab, axis=axis) != 0
        lo = [slice(None)] * lab.ndim
        hi = [slice(None)] * lab.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return {"components": components, "boundary_share": float(edge.mean())}


def _fitted_part(
    name: str,
    overrides: dict,
    dev: torch.device,
    case: dict,
    out: Path,
    work: Path,
    epochs: int = FIT_EPOCHS,
    compile: bool = True,
) -> list[dict]:
    """Train the demo's network on one labelled CT (``case``: image and label paths) through the bundle's
    train.json + demo.json (+ ``overrides``), then every inference path on that CT with the fitted weights.
    The weights are kept in ``out/fitted/<bundle>/model.pt`` and reused."""
    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    image, label = Path(case["image"]).resolve(), Path(case["label"]).resolve()
    if not demo_cfg.is_file():
        print(f"  {name} | fitted: skipped (no configs/demo.json)", flush=True)
        return []
    ckpt, train_s = fit_demo_network(name, overrides, case, out, epochs)
    b = _Bundle(name, str(ckpt), dev, overrides, configs=[demo_cfg])
    rows = _inference_part(b, [str(image)], work / "fitted", compile=compile)
    dice, per_class = _dice_vs_labels(rows[0]["label_file"], str(label), b.num_classes)
    labels_geometry = _label_geometry(str(label), b.num_classes)
    for r in rows:
        r["labels_geometry"] = labels_geometry
        r["configuration"] = f"{demo_cfg.relative_to(REPO)} fitted to {image.name} ({epochs} epochs), weights {ckpt}"
        r["baseline_dice_vs_labels"] = dice
        r["baseline_dice_per_class"] = per_class
        r["fit_seconds"] = train_s
    return rows


def fit_demo_network(name: str, overrides: dict, case: dict, out: Path, epochs: int = FIT_EPOCHS):
    """The demo's network (``configs/demo.json``) trained on the one labelled CT ``case`` through the bundle's own
    train.json (+ ``overrides``) for ``epochs``: ``(out/fitted/<bundle>/model.pt, training seconds or None when
    the weights of the same fit were there already)``."""
    import subprocess
    import sys

    demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
    image, label = Path(case["image"]).resolve(), Path(case["label"]).resolve()
    folder = (out / "fitted" / name).resolve()
    ckpt = folder / "model.pt"
    datalist = folder / "datalist.json"
    item = {"image": str(image), "label": str(label)}
    settings = {
        **overrides,
        "datalist_file": str(datalist),
        "max_epochs": epochs,
        "val_interval": epochs,
        "ckpt_dir": str(folder),
        "ckpt_path": str(ckpt),
        "output_dir": str(folder / "runs"),
    }
    train_s = None
    if not (ckpt.is_file() and _same_fit(folder, settings, item)):
        # no weights yet, or weights of another fit (other epochs, overrides or CT): fit again from scratch
        if ckpt.is_file():
            print(f"  {name} | fitted: {ckpt} was fitted with other settings, fitting again", flush=True)
            ckpt.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(datalist, json.dumps({"training": [item], "validation": [item]}, indent=2) + "\n")
        atomic_write_text(folder / "fit.json", json.dumps(settings, indent=2) + "\n")
        configs = [str(REPO / "bundles" / name / "configs" / "train.json"), str(demo_cfg), str(folder / "fit.json")]
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs)]
        print(f"  {name} | fitted: training the demo's network on {image} ({epochs} epochs)", flush=True)
        t = time.perf_counter()
        with open(folder / "train.log", "w", encoding="utf-8") as log:
            done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: fitting the demo's network failed, see {folder / 'train.log'}")
        train_s = time.perf_counter() - t
    return ckpt, train_s


def _same_fit(folder: Path, settings: dict, item: dict) -> bool:
    """Whether the weights in ``folder`` were fitted with ``settings`` on ``item`` (its fit.json and datalist.json)."""
    try:
        fit = json.loads((folder / "fit.json").read_text(encoding="utf-8"))
        data = json.loads((folder / "datalist.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return fit == settings and data.get("training") == [item]


class _PaperSlices(torch.utils.data.Dataset):
    """The 2D papers' training input: one file per axial slice at the native in-plane size, read per sample,
    augmented (random rot90/flip or rotation) and zoomed to the network size with SciPy (cubic image,
    nearest label) on the CPU, as TransUNet's ``RandomGenerator`` does."""

    def __init__(self, files: list[str], img_size):
        from ..slicewise import PaperSliceAugmentd

        self.files, self.img_size = files, tuple(img_size)
        self.augment = PaperSliceAugmentd(("image", "label"))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from scipy.ndimage import zoom

        with np.load(self.files[i], allow_pickle=False) as z:
            img, lab = z["image"], z["label"]
        d = self.augment({"image": torch.from_numpy(img)[None], "label": torch.from_numpy(lab)[None].float()})
        img, lab = np.asarray(d["image"])[0], np.asarray(d["label"])[0]
        f = (self.img_size[0] / img.shape[0], self.img_size[1] / img.shape[1])
        img = zoom(img, f, order=3)
        lab = zoom(lab, f, order=0)
        return {
            "image": torch.from_numpy(img[None].astype(np.float32)),
            "label": torch.from_numpy(lab[None].astype(np.float32)),
        }


def _paper_slice_files(parser, items: list[dict], folder: Path) -> list[str]:
    pre = parser.get_parsed_content("train#preprocessing")
    files = []
    folder.mkdir(parents=True, exist_ok=True)
    for v, item in enumerate(items):
        d = pre(dict(item))
        img, lab = np.asarray(d["image"])[0], np.asarray(d["label"])[0]
        for z in range(img.shape[-1]):
            f = folder / f"case{v}_slice{z:03d}.npz"
            np.savez(f, image=img[..., z].astype(np.float32), label=lab[..., z].astype(np.uint8))
            files.append(str(f))
    return files


def _training_part(b: _Bundle, items: list[dict], work: Path, iters: int, warmup: int) -> list[dict]:
    """Iterations of the bundle's own training step, fed by its pipeline and by the plain baseline."""
    from monai.data import Dataset, list_data_collate

    parser = bundle_parser(
        b.name, {**b.overrides, "datalist": {"training": items, "validation": items[:1]}}, "train.json"
    )
    parser["device"] = b.dev
    net = parser.get_parsed_content("network").train()
    loss_fn, opt = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    amp = b.dev.type == "cuda"
    nw = int(parser.get_parsed_content("num_workers"))
    batch_size = parser.get_parsed_content("train#dataloader#batch_size")

    t = time.perf_counter()
    ours = parser.get_parsed_content("train#dataloader")
    cache_s = time.perf_counter() - t
    t = time.perf_counter()
    if b.kind == "3d":
        ds = Dataset(items, transform=parser.get_parsed_content("train#preprocessing"))
    else:
        ds = _PaperSlices(_paper_slice_files(parser, items, work / b.name / "slices"), parser["img_size"])
    prep_s = time.perf_counter() - t
    plain = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=nw, collate_fn=list_data_collate
    )

    def run(loader, label, setup_s):
        it = iter(loader)
        data_s, step_s, samples = [], [], []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            x, y = batch["image"].to(b.dev), batch["label"].to(b.dev)
            _sync(b.dev)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=amp):
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            _sync(b.dev)
            t2 = time.perf_counter()
            if i >= warmup:
                data_s.append(t1 - t0)
                step_s.append(t2 - t1)
                samples.append(int(x.shape[0]))
        total = sum(data_s) + sum(step_s)
        row = {
            "bundle": b.name,
            "pipeline": label,
            "iterations": iters,
            "batch": samples[0],
            "it_per_s": iters / total,
            "samples_per_s": sum(samples) / total,
            "data_s_per_it": float(np.mean(data_s)),
            "step_s_per_it": float(np.mean(step_s)),
            "setup_s": setup_s,
        }
        print(f"  {b.name} | training {label}: {row['it_per_s']:.3f} it/s", flush=True)
        return row

    base = run(plain, "baseline: plain DataLoader + CPU transforms", prep_s)
    mine = run(ours, "bundle pipeline", cache_s)
    mine["speedup_vs_baseline"] = mine["it_per_s"] / base["it_per_s"]
    base["speedup_vs_baseline"] = 1.0
    return [base, mine]


def _mtm_part(repeats: int = 5, smoke: bool = False) -> list[dict]:
    """MT-UNet's mixed transformer module stages at the official sizes: vectorised (the bundle's network)
    against the plain loop reference (``common.tools.mt_unet_reference``), forward only."""
    from ..networks.mt_unet import OFFICIAL_MTM_STAGES, build_mtm_stage
    from . import mt_unet_reference as ref

    rows = []
    stages = {"encoder1 (smoke)": (32, 8)} if smoke else OFFICIAL_MTM_STAGES
    for name, (dim, grid) in stages.items():
        torch.manual_seed(0)
        kw = {"num_heads": 2, "ea_heads": 4, "ea_memory": 8} if smoke else {}
        fast = build_mtm_stage(dim, depth=2, **kw).eval()
        loop = ref.to_loop_reference(fast).eval()
        x = torch.randn(1, grid, grid, dim)
        times = {}
        with torch.no_grad():
            for label, m in (("vectorised", fast), ("loop", loop)):
                m(x)  # warm-up
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    y = m(x)
                    ts.append(time.perf_counter() - t0)
                times[label] = (min(ts), y)
        diff = float((times["vectorised"][1] - times["loop"][1]).abs().max())
        row = {
            "stage": name,
            "channels": dim,
            "grid": grid,
            "vectorised_ms": 1000 * times["vectorised"][0],
            "loop_ms": 1000 * times["loop"][0],
            "speedup": times["loop"][0] / times["vectorised"][0],
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"  mt_unet mtm {name}: {row['vectorised_ms']:.1f} ms vs loop {row['loop_ms']:.1f} ms ({row['speedup']:.2f}x)",
            flush=True,
        )
    return rows


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _precisions(dev: torch.device) -> list[tuple[str, torch.dtype | None]]:
    return [("fp32", None), (_fast_precision(dev), torch.bfloat16 if dev.type == "cpu" else torch.float16)]


def _peak_part(dev: torch.device, smoke: bool = False, repeats: int = 3) -> dict:
    """The machine's own peak, in GFLOP/s, per precision: a large matrix product and a 3D convolution."""
    n = 256 if smoke else 4096
    side, ch = (8, 8) if smoke else (48, 64)
    peak = {}
    for name, dtype in _precisions(dev):
        t = dtype or torch.float32
        a, b = torch.randn(n, n, device=dev, dtype=t), torch.randn(n, n, device=dev, dtype=t)
        x = torch.randn(1, ch, side, side, side, device=dev, dtype=t)
        conv = torch.nn.Conv3d(ch, ch, 3, padding=1, bias=False).to(dev, t)
        with torch.no_grad():
            mm = _best_seconds(lambda: (torch.matmul(a, b), _sync(dev)), repeats)
            cv = _best_seconds(lambda: (conv(x), _sync(dev)), repeats)
        peak[name] = {
            "matmul_gflops": 2 * n**3 / mm / 1e9,
            "conv3d_gflops": 2 * ch * ch * 27 * side**3 / cv / 1e9,
        }
        peak[name]["peak_gflops"] = max(peak[name]["matmul_gflops"], peak[name]["conv3d_gflops"])
    return peak


def _efficiency_part(b: "_Bundle", peak: dict, repeats: int = 3, compile: bool = True) -> list[dict]:
    """The bundle network's forward on one inference batch (3D: ``sw_batch_size`` windows of ``roi_size``; 2D:
    ``slice_batch`` slices of ``img_size``): its FLOPs (torch's counter), achieved GFLOP/s per precision and the
    share of the machine's peak in that precision; with ``compile``, also the reduced-precision forward through
    the bundles' ``compile`` switch (:func:`common.inference.compiled_forward`), with its compile time."""
    from torch.utils.flop_counter import FlopCounterMode

    from common.inference import compiled_forward

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
    paths = [(name, dtype, False) for name, dtype in _precisions(b.dev)]
    if compile:
        paths.append((paths[-1][0], paths[-1][1], True))
    for name, dtype, compiled in paths:
        fn = compiled_forward(net, x.shape[0]) if compiled else net

        def forward():
            with torch.no_grad(), torch.autocast(b.dev.type, dtype=dtype, enabled=dtype is not None):
                fn(x)
            _sync(b.dev)

        compile_s = None
        if compiled:
            t = time.perf_counter()
            forward()  # compiles
            compile_s = time.perf_counter() - t
        seconds = _best_seconds(forward, repeats)
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


# What a GPU should reach (the targets, on a GPU): end to end against the baseline path of the same run,
# and the bundle's training pipeline against a plain one
TARGETS = {"3d": 2.0, "2d": 5.0, "training": 2.0}
GPU_CHECK_PARTS = ("efficiency", "inference", "training")


def check_targets(res: dict) -> list[dict]:
    """Per bundle: the best end-to-end speed-up over its baseline (BTCV-size volume) and the training pipeline's
    over the plain one, each against :data:`TARGETS`."""
    rows = []
    for name in dict.fromkeys(r["bundle"] for r in res.get("inference", [])):
        inf = [r for r in res["inference"] if r["bundle"] == name]
        kind = "2d" if any("slice_resize" in r["switches"] for r in inf) else "3d"
        best = max(inf, key=lambda r: r["speedup_vs_baseline"])
        what = f"inference ({best['variant']})"
        rows.append({"bundle": name, "what": what, "speedup": best["speedup_vs_baseline"], "target": TARGETS[kind]})
        train = [r for r in res.get("training", []) if r["bundle"] == name and r["pipeline"] == "bundle pipeline"]
        if train:
            speedup = train[0]["speedup_vs_baseline"]
            rows.append({"bundle": name, "what": "training", "speedup": speedup, "target": TARGETS["training"]})
    for r in rows:
        r["met"] = r["speedup"] >= r["target"]
    return rows


def _targets_table(res: dict) -> list[str]:
    dev = res["machine"]["device"]
    return _table(
        f"Targets (set for a GPU; this run: {dev})",
        ["bundle", "what", ">speed-up", ">target", "met"],
        [
            [r["bundle"], r["what"], f"{_fmt(r['speedup'])}x", f"{_fmt(r['target'], 1)}x", "yes" if r["met"] else "no"]
            for r in res.get("targets", [])
        ],
    )


def _efficiency_tables(res: dict) -> list[str]:
    out = _table(
        "Forward efficiency against the machine's own peak",
        ["bundle", "precision", "input", ">GFLOP", ">s", ">GFLOP/s", ">share of peak", ">compile s"],
        [
            [
                r["bundle"],
                r["precision"],
                "x".join(map(str, r["input_shape"])),
                _fmt(r["gflop"], 1),
                _fmt(r["seconds"], 3),
                _fmt(r["gflops"], 0),
                _share(r["share_of_peak"]),
                _fmt(r.get("compile_s"), 0),
            ]
            for r in res.get("efficiency", [])
        ],
    )
    peak = ", ".join(
        f"{p}: matrix product {_fmt(v['matmul_gflops'], 0)}, 3D convolution {_fmt(v['conv3d_gflops'], 0)} GFLOP/s"
        for p, v in res["peak"].items()
    )
    out += ["", f"Peak of this machine in the same run ({peak}); the share is against the larger of the two."]
    fast = [r for r in res.get("efficiency", []) if r["precision"] != "fp32" and r.get("profile")]  # eager
    if fast:
        out += _table(
            f"Where the {fast[0]['precision']} forward's time goes (torch profiler, one forward)",
            ["bundle", "operator", ">calls", ">share of forward", ">GFLOP/s", ">share of peak"],
            [
                [
                    r["bundle"],
                    p["operator"],
                    p["calls"],
                    _share(p["share"]),
                    _fmt(p["gflops"], 0),
                    _share(p["share_of_peak"]),
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


def suite(
    bundles: list[str],
    out_dir: str = "bench",
    ckpts: dict | None = None,
    parts: tuple[str, ...] = ("efficiency", "inference", "agreement", "dataset", "training", "scaling", "mtm"),
    sizes: dict | None = None,
    train_iters: int = 3,
    train_warmup: int = 1,
    device: str | None = None,
    overrides: dict | None = None,
    smoke: bool = False,
    volumes: tuple[str, ...] = ("sample", "btcv"),
    paths: tuple[int, ...] | None = None,
    fit_epochs: int = FIT_EPOCHS,
    doc: str | os.PathLike | None = None,
    command: str = "",
    compile: bool = True,
) -> dict:
    """Run the benchmark suite (see the module docstring) and write ``<out_dir>/suite.md`` and ``suite.json``;
    with ``doc``, the report also becomes that document (``docs/benchmarks.md``, the collection's speed tables)."""
    if doc and smoke:
        raise ValueError("a smoke run's figures mean nothing: it does not write the benchmark document")
    dev = (
        torch.device(device)
        if device
        else (torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu"))
    )
    sizes = dict(sizes or (SMOKE_SIZES if smoke else SIZES))
    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="suite-", dir=out if out.exists() else None))
    data = out / "data"
    result = {
        "benchmark": "suite",
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "smoke": smoke,
        "machine": machine_info(dev),
        "sizes": sizes,
        "weights": {},
        "inference": [],
        "agreement": [],
        "fitted": [],
        "dataset": [],
        "training": [],
        "scaling": [],
        "mtm": [],
        "efficiency": [],
        "levers": [],
    }
    spacing = SMOKE_SPACING if smoke else None
    btcv = _phantom_file(data, sizes["btcv"], seed=2024, spacing=spacing)["image"]
    use_sample = "sample" in volumes and DEFAULT_SAMPLE.is_file() and not smoke
    volumes = ([str(DEFAULT_SAMPLE)] if use_sample else []) + ([btcv] if "btcv" in volumes else [])
    train_items = [_phantom_file(data, sizes["btcv"], seed=s, with_label=True, spacing=spacing) for s in (11, 12)]
    measured = []
    for name in bundles:
        ckpt = (ckpts or {}).get(name)
        demo = REPO / "bundles" / name / "demo" / "models" / "model.pt"
        demo_cfg = REPO / "bundles" / name / "configs" / "demo.json"
        b = _Bundle(name, None, dev, (overrides or {}).get(name, {}))
        if ckpt is None and not smoke and demo.is_file():
            trained, configuration = None, None
            if _fits(b, str(demo)):
                ckpt = str(demo)  # the demo trained the bundle's own network
                trained, configuration = _Bundle(name, ckpt, dev, b.overrides), "the bundle's network"
            elif demo_cfg.is_file():
                # the demo trained a reduced network: switches' agreement measured on it, in its configuration
                trained = _Bundle(name, str(demo), dev, b.overrides, configs=[demo_cfg])
                configuration = f"{demo_cfg.relative_to(REPO)} (the demo's reduced network)"
            if "agreement" in parts and trained is not None:
                for r in _inference_part(trained, volumes, work / "agreement", compile=compile):
                    r["configuration"] = f"{configuration}, weights {demo.relative_to(REPO)}"
                    result["agreement"].append(r)
        b.ckpt = ckpt
        result["weights"][name] = ckpt or "random initialisation (timings do not depend on the weights; agreement does)"
        print(f"{name} ({b.kind}), weights: {result['weights'][name]}", flush=True)
        if "efficiency" in parts:
            if "peak" not in result:
                result["peak"] = _peak_part(dev, smoke)
            result["efficiency"] += _efficiency_part(b, result["peak"], compile=compile)
        if "inference" in parts:
            result["inference"] += _inference_part(b, volumes, work, paths, compile)
        if "dataset" in parts:
            result["dataset"] += _dataset_part(b, [btcv] + [it["image"] for it in train_items], work, compile)
        if "fitted" in parts and (smoke or use_sample):
            case = (
                train_items[0]
                if smoke
                else {"image": DEFAULT_SAMPLE, "label": DEFAULT_SAMPLE.with_name("label.nii.gz")}
            )
            epochs = 1 if smoke else fit_epochs
            result["fitted"] += _fitted_part(name, b.overrides, dev, case, out, work, epochs, compile)
        if "levers" in parts:
            sample = None if smoke or not DEFAULT_SAMPLE.is_file() else DEFAULT_SAMPLE
            result["levers"] += levers_part(b, dev, out, work, data, sample, smoke, fit_epochs)
            measured.append(b)
        if "training" in parts:
            result["training"] += _training_part(b, train_items, work, train_iters, train_warmup)
        if "scaling" in parts:
            fast_name, fast = variants(b.kind, dev, compile=False)[-1]
            for size_name, shape in sizes.items():
                vol = _phantom_file(data, shape, seed=2024, spacing=spacing)["image"]
                r = b.infer(vol, fast, work / name / f"scaling_{size_name}")
                r.update({"bundle": name, "size": size_name, "input_shape": list(shape), "variant": fast_name})
                result["scaling"].append(r)
                print(
                    f"  {name} | scaling {size_name}: {r['seconds']:.1f} s, peak RAM {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "suite.partial.json", json.dumps(result, indent=2, default=str) + "\n")
    if "levers" in parts:
        sample = None if smoke or not DEFAULT_SAMPLE.is_file() else DEFAULT_SAMPLE
        result["levers"] += ensemble_rows(measured, out, work, data, sample, smoke)
    if "mtm" in parts and "mt_unet_btcv" in bundles:
        result["mtm"] = _mtm_part(smoke=smoke)
    result["targets"] = check_targets(result)
    shutil.rmtree(work, ignore_errors=True)
    markdown = suite_markdown(result)
    _write(result, out / ("suite_smoke" if smoke else "suite"), markdown)
    if doc:
        old = Path(doc).read_text(encoding="utf-8") if Path(doc).is_file() else ""
        atomic_write_text(doc, merge_doc(old, markdown))
        print(f"written: {doc} (the sections of this run; the others as they were)")
    return result


def suite_markdown(res: dict) -> str:
    lines = [
        "# Benchmarks" + (" (smoke mode: tiny inputs, figures meaningless)" if res["smoke"] else ""),
        "",
        "Written by the benchmark (`common/tools/benchmark.py`; what each part measures is in its docstring), each "
        "section by the run named under its title. Timings on shared machines vary by 15 % or more between runs: "
        "compare the paths of one run, as ratios.",
    ]
    sections: dict[str, list[str]] = {}
    if res.get("targets"):
        sections["targets"] = _targets_table(res)
    if res.get("peak"):
        sections["efficiency"] = _efficiency_tables(res)
    if res["inference"]:
        shape = "x".join(map(str, res["sizes"]["btcv"]))
        sections["inference"] = _table(
            f"Inference end to end (file to written label file): the real CT sample and a {shape} phantom at 0.8 x 0.8 x 2.5 mm",
            [
                "bundle",
                "volume",
                "path",
                ">load s",
                ">preprocess s",
                ">network s",
                ">postprocess s",
                ">write s",
                ">total s",
                ">warm-up s",
                ">speed-up",
                ">outside forward",
                ">of which machinery",
                ">agreement with baseline",
                ">peak RAM MB",
                ">peak GPU MB",
            ],
            [
                [
                    r["bundle"],
                    r["volume"],
                    r["variant"],
                    *(_fmt(r["stages_s"][k]) for k in STAGES),
                    _fmt(r["seconds"]),
                    _fmt(r.get("warm_up_s")),
                    f"{_fmt(r['speedup_vs_baseline'])}x",
                    _share(r.get("outside_forward_share")),
                    _share(r.get("machinery_share")),
                    f"{_fmt(100 * r['agreement_vs_baseline'], 2)}%",
                    _fmt(r["peak_rss_mb"], 0),
                    _fmt(r["peak_cuda_mb"], 0),
                ]
                for r in res["inference"]
            ],
        )
    if res.get("agreement"):
        sections["agreement"] = _table(
            "Agreement of the switches on a trained model (the demo's network, in the configuration named)",
            [
                "bundle",
                "volume",
                "path",
                ">total s",
                ">warm-up s",
                ">speed-up",
                ">agreement with baseline",
                "configuration",
            ],
            [
                [
                    r["bundle"],
                    r["volume"],
                    r["variant"],
                    _fmt(r["seconds"]),
                    _fmt(r.get("warm_up_s")),
                    f"{_fmt(r['speedup_vs_baseline'])}x",
                    f"{_fmt(100 * r['agreement_vs_baseline'], 2)}%",
                    r["configuration"],
                ]
                for r in res["agreement"]
            ],
        )
    if res.get("dataset"):
        sections["dataset"] = _table(
            "The bundle's own inference on a folder of BTCV-size volumes (its evaluator and DataLoader workers)",
            [
                "bundle",
                "path",
                ">volumes",
                ">workers",
                ">total s",
                ">s per volume",
                ">outside forward",
                ">peak RAM MB",
                ">peak GPU MB",
            ],
            [
                [
                    r["bundle"],
                    r["variant"],
                    r["volumes"],
                    r["num_workers"],
                    _fmt(r["seconds"]),
                    _fmt(r["seconds_per_volume"]),
                    _share(r["outside_forward_share"]),
                    _fmt(r["peak_rss_mb"], 0),
                    _fmt(r["peak_cuda_mb"], 0),
                ]
                for r in res["dataset"]
            ],
        )
    if res.get("fitted"):
        sections["fitted"] = _table(
            "Agreement on weights fitted to the real CT sample (the demo's network trained on that CT)",
            [
                "bundle",
                "path",
                ">total s",
                ">speed-up",
                ">agreement with baseline",
                ">baseline Dice vs labels",
                ">components: baseline / labels",
                "configuration",
            ],
            [
                [
                    r["bundle"],
                    r["variant"],
                    _fmt(r["seconds"]),
                    f"{_fmt(r['speedup_vs_baseline'])}x",
                    f"{_fmt(100 * r['agreement_vs_baseline'], 2)}%",
                    _fmt(r["baseline_dice_vs_labels"], 3),
                    f"{r['prediction_geometry']['components']} / {r['labels_geometry']['components']}"
                    if "prediction_geometry" in r
                    else "",
                    r["configuration"],
                ]
                for r in res["fitted"]
            ],
        )
    if res["training"]:
        sections["training"] = _table(
            "Training throughput (the bundle's batch and crop settings; data time separated from the model step)",
            [
                "bundle",
                "pipeline",
                ">batch",
                ">it/s",
                ">samples/s",
                ">data s/it",
                ">step s/it",
                ">setup s",
                ">speed-up",
            ],
            [
                [
                    r["bundle"],
                    r["pipeline"],
                    r["batch"],
                    _fmt(r["it_per_s"], 3),
                    _fmt(r["samples_per_s"], 2),
                    _fmt(r["data_s_per_it"]),
                    _fmt(r["step_s_per_it"]),
                    _fmt(r["setup_s"], 1),
                    f"{_fmt(r['speedup_vs_baseline'])}x",
                ]
                for r in res["training"]
            ],
        )
    if res["scaling"]:
        sections["scaling"] = _table(
            "Scaling (fastest path of each bundle; input at 0.8 x 0.8 x 2.5 mm)",
            [
                "bundle",
                "path",
                "input",
                "network grid",
                ">total s",
                ">network s",
                ">peak RAM MB",
                ">peak GPU MB",
                "stitching",
            ],
            [
                [
                    r["bundle"],
                    r["variant"],
                    "x".join(map(str, r["input_shape"])),
                    "x".join(map(str, r["shape"])),
                    _fmt(r["seconds"]),
                    _fmt(r["stages_s"]["network"]),
                    _fmt(r["peak_rss_mb"], 0),
                    _fmt(r["peak_cuda_mb"], 0),
                    r["stitching"] or "-",
                ]
                for r in res["scaling"]
            ],
        )
    if res.get("levers"):
        sections["levers"] = levers_table(res["levers"])
    if res.get("mtm"):
        sections["mtm"] = _table(
            "MT-UNet mixed transformer module stages (2 MTMs each, batch 1, forward, minimum of 5 runs)",
            ["stage", "channels @ grid", ">vectorised ms", ">loop reference ms", ">speed-up", ">max abs difference"],
            [
                [
                    r["stage"],
                    f"{r['channels']} @ {r['grid']}",
                    _fmt(r["vectorised_ms"], 1),
                    _fmt(r["loop_ms"], 1),
                    f"{_fmt(r['speedup'])}x",
                    f"{r['max_abs_diff']:.1e}",
                ]
                for r in res["mtm"]
            ],
        )
    run = _run_line(res)
    for part in PARTS_ORDER:
        if part in sections:
            sections[part][2:2] = ["", run]  # under the section's title: the run it comes from
            lines += ["", f"<!-- part: {part} -->", *sections[part], "<!-- end part -->"]
    lines += [
        "",
        "Inference: one run per path after a warm-up forward (where the + compile paths compile: 'warm-up s'); "
        "stages are the bundle's own transforms split at the loader (load), the rest of `preprocessing` (preprocess), the inferer (network), `postprocessing` without "
        "the writer (postprocess) and `SaveImaged` (write). Agreement: share of voxels whose label equals the "
        "baseline's. Peak RAM / GPU: the process's largest resident size / CUDA allocation during the path. "
        "Outside forward (2D): share of the total not spent in the network's forward passes (loading and "
        "preprocessing included); of which machinery: the resizing, argmax and stacking around the forwards, the "
        "inversion and the writing. Training: mean over the timed "
        "iterations after the warm-up ones; 'setup' is the cache build (bundle pipeline) or the slice-file export "
        "(2D baseline).",
    ]
    return "\n".join(lines) + "\n"


PARTS_ORDER = (
    "targets",
    "efficiency",
    "inference",
    "agreement",
    "dataset",
    "fitted",
    "levers",
    "training",
    "scaling",
    "mtm",
)
_PART_RX = re.compile(r"<!-- part: (\w+) -->\n(.*?)<!-- end part -->\n?", re.S)


def _run_line(res: dict) -> str:
    m = res["machine"]
    return (
        f"Run of {res.get('date', '?')}"
        + (f", `{res['command']}`" if res.get("command") else "")
        + f". Machine: {m['cpu']} ({m['cpu_count']} CPUs, torch threads {m['torch_threads']}), device {m['device']}"
        + (f", GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "")
        + f"; torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}. Weights: "
        + ("; ".join(f"{k}: {v}" for k, v in res["weights"].items()) or "-")
        + "."
    )


def merge_doc(old: str, new: str) -> str:
    """``new`` (a report of :func:`suite_markdown`) with the sections of ``old`` that ``new`` does not have: the
    benchmark document keeps every part's latest run, each section naming its own run."""
    parts = {name: body for name, body in _PART_RX.findall(old or "")}
    parts.update({name: body for name, body in _PART_RX.findall(new)})
    first = _PART_RX.search(new)
    head = new[: first.start()] if first else new
    tail = new[max((m.end() for m in _PART_RX.finditer(new)), default=len(new)) :] if first else ""
    body = "".join(f"<!-- part: {p} -->\n{parts[p]}<!-- end part -->\n" for p in PARTS_ORDER if p in parts)
    return head + body + tail


def _share(v: float | None) -> str:
    return "-" if v is None else _fmt(100 * v, 1) + "%"


def _table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown section: ``## title`` and a table; a column named ``">x"`` is right-aligned and headed ``x``."""
    heads = [c.lstrip(">") for c in columns]
    align = ["---:" if c.startswith(">") else "---" for c in columns]
    out = ["", f"## {title}", "", "| " + " | ".join(heads) + " |", "| " + " | ".join(align) + " |"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _fmt(v, nd=2):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def _write(result: dict, stem: Path, markdown: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown)
    print(markdown)
    print(f"written: {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.tools.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", action="append", default=None, help="bundle(s) to measure (default: all in bundles/)")
    ap.add_argument(
        "--ckpt",
        action="append",
        default=[],
        help="bundle=path of trained weights (default: bundles/<b>/demo/models/model.pt if present)",
    )
    ap.add_argument(
        "--parts",
        default="efficiency,inference,agreement,dataset,training,scaling,mtm",
        help="comma-separated: efficiency (each network's forward FLOP/s against the machine's peak), inference, agreement (switches on a demo-trained reduced network), dataset (the bundle's "
        "evaluator on a folder of 3 volumes), fitted (the demo's network "
        "trained on the real CT sample, then the paths on it; trains, so not in the default), levers (TTA, cleanup "
        "and ensembles on demo and fitted weights: Dice, HD95, time; trains when weights are missing, not in the "
        "default), training, scaling, "
        "mtm (MT-UNet's module stages)",
    )
    ap.add_argument("--out", default="bench")
    ap.add_argument(
        "--render",
        default=None,
        metavar="SUITE_JSON",
        help="measure nothing: write --doc from the suite.json a run saved (on this or another machine)",
    )
    ap.add_argument(
        "--doc",
        default=None,
        help="also write the report to this document (the collection's speed tables: docs/benchmarks.md)",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny inputs: checks the suite runs, figures mean nothing")
    ap.add_argument(
        "--gpu-check",
        action="store_true",
        help=f"the GPU check: parts {','.join(GPU_CHECK_PARTS)} on the BTCV-size phantom, every bundle, with the "
        "targets (3D 2x the model-zoo recipe, 2D 5x the per-slice loop, training 2x the plain pipeline)",
    )
    ap.add_argument(
        "--no-compile",
        action="store_true",
        help="leave out the torch.compile paths and forwards (their compiling takes minutes; the GPU check leaves "
        "them out)",
    )
    ap.add_argument(
        "--volumes",
        default="sample,btcv",
        help="inference volumes: sample (the real CT of ../shared, when present), btcv (the BTCV-size phantom)",
    )
    ap.add_argument(
        "--paths",
        default=None,
        help="comma-separated indices of the inference paths beside the baseline (0), e.g. 2 for the fastest only (default: all)",
    )
    ap.add_argument(
        "--fit-epochs",
        type=int,
        default=FIT_EPOCHS,
        help=f"epochs of the fitted part's training (default {FIT_EPOCHS}); weights fitted with other settings are fitted again",
    )
    ap.add_argument("--train-iters", type=int, default=3)
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        help="bundle:key=json config override, e.g. transunet_btcv:slice_batch=32",
    )
    args = ap.parse_args(argv)
    if args.render:
        if not args.doc:
            ap.error("--render needs --doc")
        res = json.loads(Path(args.render).read_text(encoding="utf-8"))
        if res.get("smoke"):
            ap.error(f"{args.render} is a smoke run: its figures mean nothing")
        old = Path(args.doc).read_text(encoding="utf-8") if Path(args.doc).is_file() else ""
        atomic_write_text(args.doc, merge_doc(old, suite_markdown(res)))
        print(f"written: {args.doc}")
        return 0
    if args.gpu_check:
        args.parts, args.volumes, args.no_compile = ",".join(GPU_CHECK_PARTS), "btcv", True
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bundles = args.bundle or sorted(
        p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()
    )
    overrides: dict[str, dict] = {}
    for o in args.override:
        name, kv = o.split(":", 1)
        k, v = kv.split("=", 1)
        overrides.setdefault(name, {})[k] = json.loads(v)
    ckpts = dict(c.split("=", 1) for c in args.ckpt)
    suite(
        bundles,
        args.out,
        ckpts,
        tuple(p.strip() for p in args.parts.split(",")),
        None,
        args.train_iters,
        args.train_warmup,
        args.device,
        overrides,
        args.smoke,
        tuple(v.strip() for v in args.volumes.split(",")),
        tuple(int(i) for i in args.paths.split(",")) if args.paths else None,
        args.fit_epochs,
        args.doc,
        "python -m common.tools.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
        compile=not args.no_compile,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
