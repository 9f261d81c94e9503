"""The ``ddp`` part (in the GPU check): one short epoch of ``multi_gpu_train.json`` under ``torchrun`` over every
visible GPU (NCCL), for a 3D and a 2D bundle, on the two labelled BTCV-size phantoms (one validates): whether the
ranks start, train, validate and save, and how long the epoch took with its start-up. Left out with fewer than two
GPUs; a smoke run takes two CPU processes (gloo) instead, which checks the same path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from ...io import atomic_write_text
from .core import REPO, Context, chosen_bundles, fmt, table

__all__ = ["NAME", "measure_once", "section"]

NAME = "ddp"


def measure_once(ctx: Context, bundles: list[str]) -> None:
    gpus = torch.cuda.device_count() if ctx.dev.type == "cuda" else 0
    if gpus < 2 and not ctx.smoke:
        ctx.result["ddp"].append({"bundle": "-", "processes": gpus, "ok": None, "note": "fewer than 2 GPUs visible"})
        return
    nproc = max(gpus, 2)
    for name in chosen_bundles(ctx, bundles):
        ctx.result["ddp"].append(_epoch(ctx, name, nproc, gpus))


def _epoch(ctx: Context, name: str, nproc: int, gpus: int) -> dict:
    folder = ctx.work / "ddp" / name
    folder.mkdir(parents=True, exist_ok=True)
    datalist = {"training": ctx.train_items, "validation": ctx.train_items[:1]}
    atomic_write_text(folder / "datalist.json", json.dumps(datalist, indent=2) + "\n")
    settings = {
        **ctx.bundles[name].overrides,
        "datalist_file": str(folder / "datalist.json"),
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "runs"),
        "max_epochs": 1,
        "val_interval": 1,
        "resume": False,
    }
    atomic_write_text(folder / "overrides.json", json.dumps(settings, indent=2) + "\n")
    cfg = REPO / "bundles" / name / "configs"
    configs = [str(cfg / "train.json"), str(cfg / "multi_gpu_train.json"), str(folder / "overrides.json")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", json.dumps(configs)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run's CPU processes
    t = time.perf_counter()
    with open(folder / "torchrun.log", "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    seconds = time.perf_counter() - t
    saved = (folder / "models" / "model.pt").is_file()
    row = {
        "bundle": name,
        "processes": nproc,
        "backend": "nccl" if gpus else "gloo",
        "seconds": seconds,
        "ok": done.returncode == 0 and saved,
        "note": "" if done.returncode == 0 and saved else f"failed: see {folder / 'torchrun.log'}",
    }
    print(f"  {name} | DDP epoch over {nproc} processes ({row['backend']}): {'ok' if row['ok'] else 'FAILED'}")
    return row


def section(res: dict) -> list[str] | None:
    rows = res.get("ddp")
    if not rows:
        return None
    return table(
        "Multi-GPU training: one epoch of multi_gpu_train.json over every visible GPU (start-up included)",
        ["bundle", ">processes", "backend", ">s", "ok", "note"],
        [
            [
                r["bundle"],
                r["processes"],
                r.get("backend", "-"),
                fmt(r.get("seconds"), 1),
                "-" if r["ok"] is None else ("yes" if r["ok"] else "NO"),
                r.get("note", ""),
            ]
            for r in rows
        ],
    )
