"""What a result was computed on: the processor, the GPU, the library versions. Recorded in every trained
checkpoint (``common.bundle.CheckpointRecord``) and every benchmark run: floating-point results, a trained model's
scores among them, are reproducible on one kind of machine, not across kinds."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_name", "machine", "describe"]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what Python's ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device = "cpu") -> dict:
    """The processor (name, CPUs, instruction set), the GPU where ``device`` is one, and torch's version."""
    dev = torch.device(device)
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


def describe(info: dict) -> str:
    """``AMD EPYC (2 CPUs, AVX2), torch 2.13.0+cpu``, or the GPU first where there is one."""
    where = f"{info.get('cpu', '?')} ({info.get('cpu_count', '?')} CPUs, {info.get('cpu_capability', '?')})"
    if info.get("gpu"):
        where = f"{info['gpu']} (CUDA {info.get('cuda', '?')}) with {where}"
    return f"{where}, torch {info.get('torch', '?')}"
