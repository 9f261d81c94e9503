"""The ``learn`` part (in the GPU check): does each bundle's full-size recipe learn at all? ``--learn-iters`` (100)
iterations of its own training step (its data pipeline, loss, optimizer, AMP with a gradient scaler where CUDA is)
from random weights on the two labelled BTCV-size phantoms, then its own inference of the first of them with those
weights: the mean loss over the first and the last tenth of the iterations, and that training case's mean Dice
over its organs. A recipe that does not learn on its own training cases in 100 iterations has a broken piece."""

from __future__ import annotations

import time

import numpy as np
import torch

from .core import Bundle, Context, PeakMemory, TrainingStep, batches, dice_vs_labels, fmt, sync, table

__all__ = ["NAME", "ITERATIONS", "measure", "section"]

NAME = "learn"
ITERATIONS = 100


def measure(ctx: Context, b: Bundle) -> None:
    iters = 4 if ctx.smoke else ctx.learn_iters
    case = ctx.train_items[0]
    step = TrainingStep(b, ctx.train_items)
    loader = step.parser.get_parsed_content("train#dataloader")
    losses = []
    with PeakMemory(b.dev) as mem:
        t = time.perf_counter()
        for batch, _ in zip(batches(loader), range(iters)):
            losses.append(step(batch))
        sync(b.dev)
        seconds = time.perf_counter() - t
    ckpt = ctx.work / "learn" / b.name / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(getattr(step.net, "module", step.net).state_dict(), ckpt)
    step_amp = step.amp and b.dev.type == "cuda"
    del step, loader
    trained = Bundle(b.name, str(ckpt), ctx.dev, b.overrides)
    pred = trained.infer(case["image"], {}, ctx.work / "learn" / b.name / "pred")
    dice, _ = dice_vs_labels(pred["label_file"], case["label"], trained.num_classes)
    tenth = max(1, iters // 10)
    row = {
        "bundle": b.name,
        "iterations": iters,
        "seconds": seconds,
        "first_loss": float(np.mean(losses[:tenth])),
        "last_loss": float(np.mean(losses[-tenth:])),
        "dice_training_case": dice,
        "amp": step_amp,
        "peak_cuda_mb": mem.peak_cuda_mb,
    }
    row["learns"] = row["last_loss"] < row["first_loss"]
    ctx.result["learn"].append(row)
    print(
        f"  {b.name} | learn: loss {row['first_loss']:.3f} -> {row['last_loss']:.3f} in {iters} iterations "
        f"({seconds:.0f} s), training case Dice {dice:.3f}",
        flush=True,
    )


def section(res: dict) -> list[str] | None:
    rows = res.get("learn")
    if not rows:
        return None
    return table(
        "Does each recipe learn? Its own training step from random weights on two BTCV-size phantoms",
        [
            "bundle",
            ">iterations",
            ">s",
            ">loss, first tenth",
            ">loss, last tenth",
            "learns",
            ">Dice, training case",
            ">peak GPU MB",
        ],  # fmt: skip
        [
            [
                r["bundle"],
                r["iterations"],
                fmt(r["seconds"], 1),
                fmt(r["first_loss"], 3),
                fmt(r["last_loss"], 3),
                "yes" if r["learns"] else "NO",
                fmt(r["dice_training_case"], 3),
                fmt(r.get("peak_cuda_mb"), 0),
            ]
            for r in rows
        ],
    )
