"""Straightforward (slow) reference for MT-UNet's LGG-SA, the baseline of the tests and the benchmark.

It follows the official algorithm (Dootmaan/MT-UNet, model/MTUNet.py) step by step, written
plainly: padding by writing into a zero canvas, window attention with explicit matmul + softmax,
and the Gaussian-weighted axial attention as a Python double loop over rows and columns that builds
the distance penalties position by position. Unlike the official code it is device- and
dtype-agnostic (no ``.cuda()``, every tensor follows the input).

The modules use the same parameter names as ``common.networks.mt_unet`` so state dicts are
interchangeable; :func:`to_loop_reference` turns any module (an MTM, a stage, a whole MTUNet) into a
copy that uses the loop forms with identical weights.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..networks.mt_unet import GaussianAxialAttention, LocalGlobalGaussianAttention


class LoopGaussianAxialAttention(nn.Module):
    """Drop-in for ``GaussianAxialAttention`` (same parameters) computed one position at a time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)  # unused, as in the official model
        self.shift = nn.Parameter(torch.randn(1).abs())
        self.bias = nn.Parameter(-torch.randn(1).abs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        # all row scores (B, H, W, W) and column scores (B, W, H, H), single head, unscaled
        row_scores = torch.matmul(q.reshape(b * h, w, c), k.reshape(b * h, w, c).transpose(1, 2)).view(b, h, w, w)
        q_t = q.permute(0, 2, 1, 3).reshape(b * w, h, c)
        k_t = k.permute(0, 2, 1, 3).reshape(b * w, h, c)
        col_scores = torch.matmul(q_t, k_t.transpose(1, 2)).view(b, w, h, h)

        rows = []
        for r in range(h):
            cols = []
            for col in range(w):
                dist_w = torch.tensor([(j - col) ** 2 for j in range(w)], device=x.device, dtype=x.dtype)
                dist_h = torch.tensor([(i - r) ** 2 for i in range(h)], device=x.device, dtype=x.dtype)
                a_row = torch.softmax(row_scores[:, r, col, :] - (self.shift * dist_w + self.bias), dim=-1)  # (B, W)
                a_col = torch.softmax(col_scores[:, col, r, :] - (self.shift * dist_h + self.bias), dim=-1)  # (B, H)
                out = (a_row.unsqueeze(-1) * v[:, r, :, :]).sum(dim=1) + (a_col.unsqueeze(-1) * v[:, :, col, :]).sum(
                    dim=1
                )
                cols.append(out)  # (B, C)
            rows.append(torch.stack(cols, dim=1))
        return torch.stack(rows, dim=1)


class ReferenceWindowAttention(nn.Module):
    """Plain multi-head attention inside windows, same parameters as ``WindowAttention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, C) -> (..., T, C)."""
        *lead, t, c = x.shape
        d = c // self.num_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(*lead, t, self.num_heads, d).transpose(-2, -3)  # (..., heads, T, d)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d), dim=-1)
        out = torch.matmul(probs, v).transpose(-2, -3).reshape(*lead, t, c)
        return self.proj(out)


class ReferenceAggregation(nn.Module):
    """Same parameters as ``WindowTokenAggregation``."""

    def __init__(self, dim: int, window_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, window_size * window_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, C) -> (..., C)."""
        probs = torch.softmax(self.score(x.mean(dim=-2)), dim=-1)
        return (x * probs.unsqueeze(-1)).sum(dim=-2)


class ReferenceLGGSA(nn.Module):
    """Drop-in for ``LocalGlobalGaussianAttention`` written the plain official way, with the loop."""

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 4) -> None:
        super().__init__()
        self.window_size = window_size
        self.local_attn = ReferenceWindowAttention(dim, num_heads)
        self.aggregate = ReferenceAggregation(dim, window_size)
        self.global_attn = LoopGaussianAxialAttention(dim)
        self.fuse = nn.Conv2d(2 * dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        if h % ws or w % ws:
            hp, wp = h + (-h) % ws, w + (-w) % ws
            canvas = torch.zeros(b, hp, wp, c, device=x.device, dtype=x.dtype)
            canvas[:, :h, :w] = x
            canvas[:, h:, w:] = x[:, h - (hp - h) :, w - (wp - w) :]
        else:
            hp, wp, canvas = h, w, x
        p, q = hp // ws, wp // ws
        windows = canvas.reshape(b, p, ws, q, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, p, q, ws * ws, c)
        local = self.local_attn(windows)  # (B, p, q, T, C)
        local_map = local.reshape(b, p, q, ws, ws, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
        tokens = self.aggregate(local)  # (B, p, q, C)
        glob = self.global_attn(tokens).permute(0, 3, 1, 2)
        glob = F.interpolate(glob, scale_factor=ws, mode="bilinear", align_corners=True)
        fused = self.fuse(torch.cat((glob, local_map), dim=1))
        return fused.permute(0, 2, 3, 1)[:, :h, :w, :]


def to_loop_reference(module: nn.Module) -> nn.Module:
    """Deep copy of ``module`` with every LGG-SA (or lone Gaussian axial attention) replaced by the
    reference form, carrying over the weights (``load_state_dict(strict=True)``)."""
    ref = copy.deepcopy(module)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, LocalGlobalGaussianAttention):
                dim = child.fuse.out_channels
                new: nn.Module = ReferenceLGGSA(dim, child.local_attn.num_heads, child.window_size)
            elif isinstance(child, GaussianAxialAttention):
                new = LoopGaussianAxialAttention(child.query.in_features)
            else:
                swap(child)
                continue
            p = next(child.parameters())
            new = new.to(device=p.device, dtype=p.dtype)
            new.load_state_dict(child.state_dict(), strict=True)
            new.train(child.training)
            setattr(parent, name, new)

    if isinstance(ref, (LocalGlobalGaussianAttention, GaussianAxialAttention)):
        holder = nn.Sequential(ref)
        swap(holder)
        return holder[0]
    swap(ref)
    return ref
