"""What every part of the benchmark stands on: the machine, memory, phantoms, the inference paths of a bundle, Markdown
tables, the suite's context and the one way it trains a bundle. Every part module imports from here; nothing here
imports a part."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ...bundle import bundle_parser
from ...inference import AUTOCAST_DTYPES, cpu_reduced_precision
from ...machine import machine
from ...weights import load_weights
from ..per_slice import per_slice

__all__ = [
    "REPO",
    "DEFAULT_SAMPLE",
    "PeakMemory",
    "machine_info",
    "STAGES",
    "FIT_EPOCHS",
    "SIZES",
    "SMOKE_SIZES",
    "SMOKE_SPACING",
    "fast_precision",
    "precisions",
    "variants",
    "phantom_file",
    "sync",
    "Bundle",
    "fits",
    "agreement",
    "label_geometry",
    "dice_vs_labels",
    "best_seconds",
    "train_bundle",
    "TrainingStep",
    "batches",
    "Context",
    "chosen_bundles",
    "table",
    "fmt",
    "share",
]

REPO = Path(__file__).resolve().parents[3]
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
    """What the figures were measured on (:func:`common.machine.machine`, with the Python and MONAI versions, the
    threads, whether the CPU has bf16 instructions and what the run left out for it)."""
    import monai

    info = machine(device)
    info.update(
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        monai=monai.__version__,
        device=str(device),
        cpu_bf16=cpu_reduced_precision()["bf16"],
    )
    if device.type == "cpu" and not info["cpu_bf16"]:
        info["left_out"] = (
            f"the bf16 paths: this CPU ({info['cpu_capability']}) has no bf16 instructions, where bf16 runs several "
            "times slower than fp32"
        )
    return info


STAGES = ("load", "preprocess", "network", "postprocess", "write")

FIT_EPOCHS = 30  # the fitted part's training length (epochs of the demo's slices_per_epoch / crops)

LOAD_STAGE = ("LoadCheckedImaged", "LoadImaged", "EnsureChannelFirstd", "CheckInputd")

# Sizes of the scaling part (voxels) at the BTCV spacing 0.8 x 0.8 x 2.5 mm: the field of view grows with them.
SIZES = {"small": (256, 256, 80), "btcv": (512, 512, 150), "large": (512, 512, 300)}

SMOKE_SIZES = {"small": (48, 48, 20), "btcv": (64, 64, 28), "large": (64, 64, 40)}

SMOKE_SPACING = (6.0, 6.0, 10.0)  # the tiny phantoms still cover a whole abdomen


def fast_precision(dev: torch.device) -> str | None:
    """The reduced precision timed on ``dev``: fp16 on a GPU, bf16 on a CPU with bf16 instructions, none on a CPU
    without them (``--autocast bf16`` runs fp32 there: :func:`common.inference.effective_autocast`)."""
    if dev.type != "cpu":
        return "fp16"
    return "bf16" if cpu_reduced_precision()["bf16"] else None


def precisions(dev: torch.device) -> list[tuple[str, torch.dtype | None]]:
    fast = fast_precision(dev)
    return [("fp32", None)] + ([(fast, AUTOCAST_DTYPES[fast])] if fast else [])


def variants(kind: str, dev: torch.device, compile: bool = True) -> list[tuple[str, dict]]:
    """The inference paths timed for a bundle: the baseline first, then the switches (config overrides).

    3D: the model-zoo recipe (fp32, softmax probabilities inverted with bilinear interpolation before the argmax,
    stitching on the input's device, the window attention of the Swin networks written out rather than
    ``scaled_dot_product_attention``), then the bundle's own defaults (``inference.json`` as it is), then label
    inversion alone, then label inversion with reduced precision.
    2D: the papers' per-slice path (attention written out too), then the batched slice-wise path, alone and with
    the papers' resizing order (argmax at the network size, nearest zoom of the labels), then both with reduced
    precision; last (unless ``compile`` is false), the fastest of them through ``torch.compile`` (its compile time
    is in the warm-up, not the total). A switch a bundle's config does not have (``flash_attention`` outside the
    Swin bundles) is left out by :meth:`Bundle.applicable`; the reduced-precision paths where the CPU has no
    instructions for it (:func:`fast_precision`; the compiled path is then the fp32 one).
    """
    fast = fast_precision(dev)
    plus = f" + {fast}" if fast else ""
    if kind == "3d":
        paths = [
            (
                "baseline: model zoo",
                {"autocast": None, "invert": "probabilities", "stitch": "device", "flash_attention": False},
            ),
            ("bundle default", {}),
            ("invert labels", {"autocast": None, "invert": "labels", "stitch": "auto"}),
            (f"invert labels{plus}", {"autocast": fast, "invert": "labels", "stitch": "auto"}),
            (
                f"invert labels{plus} + compile",
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
            (f"batched{plus}", {"autocast": fast, "slice_resize": "logits"}),
            (f"batched{plus} + label resize", {"autocast": fast, "slice_resize": "labels"}),
            (
                f"batched{plus} + label resize + compile",
                {"autocast": fast, "slice_resize": "labels", "compile": True},
            ),
        ]
    unique: list[tuple[str, dict]] = []  # without a reduced precision its paths are the fp32 ones: each once
    for name, switches in paths:
        if name not in {n for n, _ in unique} and (compile or not switches.get("compile")):
            unique.append((name, switches))
    return unique


def bundle_kind(config: dict) -> str:
    return "2d" if "slice_batch" in config else "3d"


def phantom_file(folder: Path, shape, seed: int, with_label: bool = False, spacing=None) -> dict:
    """A phantom CT (and label) of ``shape`` (at the BTCV spacing by default), generated once into ``folder``."""
    from ...io import atomic_write_bytes, nifti_bytes
    from ...phantom import BTCV_SPACING, make_phantom

    spacing = tuple(spacing or BTCV_SPACING)
    stem = f"phantom_{'x'.join(map(str, shape))}_{'x'.join(f'{s:g}' for s in spacing)}_s{seed}"
    img, lab = folder / f"{stem}.nii.gz", folder / f"{stem}_label.nii.gz"
    if not img.exists() or (with_label and not lab.exists()):
        ph = make_phantom(seed=seed, shape=tuple(shape), spacing=spacing)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(lab, nifti_bytes(ph.label, ph.affine))
        atomic_write_bytes(img, nifti_bytes(ph.image, ph.affine))
    return {"image": str(img), "label": str(lab)}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Bundle:
    """One bundle's configs, weights and device, building each inference path from ``inference.json``."""

    def __init__(self, bundle: str, ckpt: str | None, dev: torch.device, overrides: dict, configs=()):
        self.name, self.dev, self.overrides, self.configs = bundle, dev, dict(overrides), list(configs)
        config = bundle_parser(bundle, self.overrides, extra=self.configs).config
        self.kind = bundle_kind(config)
        self.keys = frozenset(config)  # the inference config's top-level ids (with the extra configs), read once
        self.num_classes = int(config["num_classes"])
        self.ckpt = ckpt

    def applicable(self, switches: dict) -> dict:
        """The switches this bundle's inference config has (the others would be unused keys); ``per_slice`` (the
        papers' loop, :mod:`common.tools.per_slice`) is the benchmark's own."""
        return {k: v for k, v in switches.items() if k in self.keys or k == "per_slice"}

    def parser(self, extra: dict | None = None, output_dir: str | None = None):
        """The bundle's inference config on the benchmark's device (what follows from it, such as the 2D slice
        batch, follows), with the overrides and ``extra`` switches."""
        p = bundle_parser(self.name, {"device": str(self.dev), **self.overrides, **(extra or {})}, extra=self.configs)
        if output_dir:
            p["output_dir"] = output_dir
        return p

    def network(self, parser):
        """The config's ``network`` (``network_def`` on the device, or what an overlay wraps it in: TensorRT), with
        the benchmark's weights."""
        torch.manual_seed(0)  # without a checkpoint, every path gets the same random weights
        net = parser.get_parsed_content("network")
        if self.ckpt:
            load_weights(net, self.ckpt, purpose="inference")
        if hasattr(net, "time_forwards"):  # the 2D networks time their forward passes when asked
            net.time_forwards = True
        return net.to(self.dev).eval()

    def amp(self, parser) -> bool:
        """The bundle's ``amp`` (on by default where CUDA is): its evaluator then runs the inferer under
        ``torch.autocast("cuda")``, and so does every path here, the baselines included (the model zoo's recipe uses
        AMP on a GPU too): paths are compared in the same precision."""
        return self.dev.type == "cuda" and bool(parser.get_parsed_content("amp"))

    def warm_up(self, parser, net, inferer) -> None:
        with torch.no_grad(), torch.autocast("cuda", enabled=self.amp(parser)):
            if self.kind == "3d":
                inferer(torch.zeros(1, 1, *parser["roi_size"], device=self.dev), net)
            else:
                net(torch.zeros(1, 1, 64, 64, 2, device=self.dev))
        sync(self.dev)

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
        amp = self.amp(parser)
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
            sync(self.dev)
            times["preprocess"] = time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda", enabled=amp):
                pred = inferer(x, net)
            sync(self.dev)
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
            "amp": amp,
            "stages_s": times,
            "seconds": sum(times.values()),
            "warm_up_s": warm_up,
            "peak_rss_mb": mem.peak_rss_mb,
            "peak_cuda_mb": mem.peak_cuda_mb,
            "stitching": getattr(inferer, "last_stitch_device", None),
            "label_file": str(files[-1]) if files else None,
        }


def fits(b: Bundle, ckpt: str) -> bool:
    """Whether ``ckpt`` loads into the bundle's (full-size) network."""
    try:
        load_weights(b.parser().get_parsed_content("network_def"), ckpt, purpose="inference")
    except Exception:  # a checkpoint of another configuration: shapes or keys differ
        return False
    return True


def agreement(a: str, b: str) -> float:
    import nibabel as nib

    x, y = np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)
    return float((x == y).mean())


def dice_vs_labels(pred_file: str, label_file: str, num_classes: int) -> tuple[float, dict[int, float]]:
    """Dice of a written label map against a label file for every class present in either, and their mean."""
    import nibabel as nib

    from ...metrics import dice

    p, g = np.asarray(nib.load(pred_file).dataobj), np.asarray(nib.load(label_file).dataobj)
    scores = {c: dice(p == c, g == c) for c in range(1, num_classes)}
    scores = {c: v for c, v in scores.items() if not np.isnan(v)}  # NaN: the class is in neither
    return (float(np.mean(list(scores.values()))) if scores else float("nan")), scores


def label_geometry(label_file: str, num_classes: int) -> dict:
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


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def train_bundle(configs: list[str], log: Path, what: str, overrides: dict | None = None) -> float:
    """``monai.bundle run`` of ``configs`` (a ``train.json`` and its overlays) in a subprocess from the repository,
    with ``overrides`` on its command line (the benchmark's ``device``), its output in ``log``: the one way the
    benchmark trains (the fitted and levers parts). Returns the seconds it took; a failed training is a
    RuntimeError naming ``what`` and the log."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([str(c) for c in configs])]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed, see {log}")
    return time.perf_counter() - t


class TrainingStep:
    """The bundle's own training step, from its ``train.json`` on ``items`` (on the bundle's device): network, loss,
    optimizer and, as MONAI's ``SupervisedTrainer`` with ``amp`` (the bundles' default where CUDA is), fp16 autocast
    with a gradient scaler. The scaler is wired on any device, so a CPU run exercises it too (there it scales fp32
    gradients and autocast stays off). ``parser`` builds the bundle's data pipeline."""

    def __init__(self, b: Bundle, items: list[dict]) -> None:
        self.dev = b.dev
        self.parser = bundle_parser(
            b.name, {**b.overrides, "datalist": {"training": items, "validation": items[:1]}}, "train.json"
        )
        self.parser["device"] = b.dev
        self.net = self.parser.get_parsed_content("network").train()
        self.loss_fn = self.parser.get_parsed_content("loss")
        self.opt = self.parser.get_parsed_content("optimizer")
        self.amp = bool(self.parser.get_parsed_content("amp"))
        self.scaler = torch.amp.GradScaler(b.dev.type, enabled=self.amp)

    def __call__(self, batch: dict) -> float:
        """One step on ``batch``; its loss."""
        x, y = batch["image"].to(self.dev), batch["label"].to(self.dev)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=self.amp and self.dev.type == "cuda"):
            loss = self.loss_fn(self.net(x), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach())


def batches(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


@dataclass
class Context:
    """What the parts of one suite run share: the device, folders, volumes, settings, and the result being filled."""

    dev: torch.device
    out: Path
    work: Path
    data: Path
    sizes: dict
    smoke: bool
    spacing: tuple | None
    use_sample: bool
    volume_kinds: tuple[str, ...]  # "sample" and/or "btcv": the inference part's volumes
    compile: bool = True
    paths: tuple[int, ...] | None = None
    fit_epochs: int = FIT_EPOCHS
    train_iters: int = 3
    train_warmup: int = 1
    learn_iters: int = 100
    result: dict = field(default_factory=dict)
    bundles: dict = field(default_factory=dict)  # name -> Bundle, every bundle measured so far
    measured: list = field(default_factory=list)  # the bundles of the levers part, for their ensemble

    # the generated volumes, made (or found on disk) when a part first asks for them
    @cached_property
    def btcv(self) -> str:
        """The BTCV-size phantom CT."""
        return phantom_file(self.data, self.sizes["btcv"], seed=2024, spacing=self.spacing)["image"]

    @cached_property
    def volumes(self) -> list[str]:
        """The inference part's volumes: the real CT sample where asked and present, the BTCV-size phantom."""
        return ([str(DEFAULT_SAMPLE)] if self.use_sample else []) + ([self.btcv] if "btcv" in self.volume_kinds else [])

    @cached_property
    def train_items(self) -> list[dict]:
        """Two labelled BTCV-size phantoms for the training parts."""
        return [
            phantom_file(self.data, self.sizes["btcv"], seed=s, with_label=True, spacing=self.spacing) for s in (11, 12)
        ]


ONE_OF_EACH_KIND = ("unetr_btcv", "transunet_btcv")  # the multi-GPU configs and switches of a kind are shared


def chosen_bundles(ctx: Context, bundles: list[str]) -> list[str]:
    """A 3D and a 2D bundle among those measured, for the GPU check's costlier parts: :data:`ONE_OF_EACH_KIND` where
    measured, else the first measured bundle of each kind."""
    picked = [n for n in ONE_OF_EACH_KIND if n in bundles]
    for kind in ("3d", "2d"):
        if not any(ctx.bundles[n].kind == kind for n in picked):
            picked += [n for n in bundles if ctx.bundles[n].kind == kind][:1]
    return picked


def table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown section: ``## title`` and a table; a column named ``">x"`` is right-aligned and headed ``x``."""
    heads = [c.lstrip(">") for c in columns]
    align = ["---:" if c.startswith(">") else "---" for c in columns]
    out = ["", f"## {title}", "", "| " + " | ".join(heads) + " |", "| " + " | ".join(align) + " |"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def fmt(v, nd=2):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def share(v: float | None) -> str:
    return "-" if v is None else fmt(100 * v, 1) + "%"
