"""The ``training`` part: iterations of the bundle's own training step (network, loss, optimizer; AMP on CUDA) at its
default batch and crop settings, the time waiting for data separated from the model step, fed by the bundle's
pipeline (cached deterministic transforms, random transforms per sample) and by a plain ``DataLoader`` with every
transform on the CPU per sample (3D: ``monai.data.Dataset``; 2D: the papers' one file per slice, zoomed with SciPy
per sample)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .core import Bundle, Context, TrainingStep, batches, fmt, sync, table

__all__ = ["NAME", "measure", "section"]

NAME = "training"


def measure(ctx: Context, b: Bundle) -> None:
    ctx.result["training"] += run(b, ctx.train_items, ctx.work, ctx.train_iters, ctx.train_warmup)


class _PaperSlices(torch.utils.data.Dataset):
    """The 2D papers' training input: one file per axial slice at the native in-plane size, read per sample,
    augmented (random rot90/flip or rotation) and zoomed to the network size with SciPy (cubic image,
    nearest label) on the CPU, as TransUNet's ``RandomGenerator`` does."""

    def __init__(self, files: list[str], img_size):
        from ...slicewise import PaperSliceAugmentd

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


def run(b: Bundle, items: list[dict], work: Path, iters: int, warmup: int) -> list[dict]:
    """Iterations of the bundle's own training step, fed by its pipeline and by the plain baseline."""
    from monai.data import Dataset, list_data_collate

    step = TrainingStep(b, items)
    parser = step.parser
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
        it = batches(loader)
        data_s, step_s, samples = [], [], []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            batch = next(it)
            batch = {"image": batch["image"].to(b.dev), "label": batch["label"].to(b.dev)}
            sync(b.dev)
            t1 = time.perf_counter()
            step(batch)
            sync(b.dev)
            t2 = time.perf_counter()
            if i >= warmup:
                data_s.append(t1 - t0)
                step_s.append(t2 - t1)
                samples.append(int(batch["image"].shape[0]))
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
            "amp": step.amp,
            "grad_scaler": step.scaler.is_enabled(),
        }
        print(f"  {b.name} | training {label}: {row['it_per_s']:.3f} it/s", flush=True)
        return row

    base = run(plain, "baseline: plain DataLoader + CPU transforms", prep_s)
    mine = run(ours, "bundle pipeline", cache_s)
    mine["speedup_vs_baseline"] = mine["it_per_s"] / base["it_per_s"]
    base["speedup_vs_baseline"] = 1.0
    return [base, mine]


def section(res: dict) -> list[str] | None:
    if not res["training"]:
        return None
    return table(
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
                fmt(r["it_per_s"], 3),
                fmt(r["samples_per_s"], 2),
                fmt(r["data_s_per_it"]),
                fmt(r["step_s_per_it"]),
                fmt(r["setup_s"], 1),
                f"{fmt(r['speedup_vs_baseline'])}x",
            ]
            for r in res["training"]
        ],
    )
