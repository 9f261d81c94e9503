"""Synthetic abdominal CT phantoms with all 13 BTCV organs: the embedded default data of every bundle.

A phantom is built in patient coordinates (millimetres, RAS: +x towards the patient's right, +y anterior,
+z superior; body centre at x = y = 0, z = 0 at the lower lumbar spine) from analytic shapes: a torso
(skin, subcutaneous fat, abdominal wall muscle, visceral fat), the lumbar/thoracic spine with spinal canal,
paraspinal and psoas muscles, ribs, a CT table, unlabelled bowel loops with gas, and the 13 BTCV organs at
anatomically plausible positions, sizes and portal-venous-phase Hounsfield units:

=====  =========================  ==========================================================
id     organ                      shape and position
=====  =========================  ==========================================================
1      spleen                     ellipsoid along the left posterolateral wall, upper abdomen
2/3    right / left kidney        bean-like ellipsoids beside the spine, left higher, with sinus
4      gallbladder                pear-like ellipsoid under the right liver lobe
5      esophagus                  tube left-anterior of the spine, joining the stomach
6      liver                      right lobe + left lobe crossing the midline, under the dome
7      stomach                    left upper quadrant, wall + fluid + gas cap
8      aorta                      tube left-anterior of the vertebral bodies, tapering
9      inferior vena cava         flattened tube right of the aorta, intrahepatic at the top
10     portal and splenic vein    curved tube from the splenic hilum to the liver hilum
11     pancreas                   curved tapering tube (head, neck, body, tail) along the vein
12/13  right / left adrenal       thin plates above and medial to the kidneys
=====  =========================  ==========================================================

Each case varies body size, pose (rotation about the long axis, shift), organ positions, sizes and
shapes (low-frequency radial perturbations), contrast enhancement and noise. The result is written as
NIfTI (int16 HU image, uint8 labels in BTCV order) with an LPS-like storage orientation (affine
``diag(-sx, -sy, sz)``, as in DICOM-derived data) and a realistic anisotropic spacing. Generation is
deterministic: the same seed, case index, shape and spacing give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import atomic_write_bytes, atomic_write_text, nifti_bytes
from .labels import BTCV_ORGANS, organ

__all__ = [
    "Phantom",
    "make_phantom",
    "write_phantom_dataset",
    "DEMO_SHAPE",
    "DEMO_SPACING",
    "BTCV_SHAPE",
    "BTCV_SPACING",
]

# The demo's default grid: 384 x 384 x 256 mm at 2 x 2 x 4 mm (thick-slice CT), small enough to train on
# two CPU cores. BTCV_* gives a full-size BTCV-like grid (512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm).
DEMO_SHAPE = (192, 192, 64)
DEMO_SPACING = (2.0, 2.0, 4.0)
BTCV_SHAPE = (512, 512, 150)
BTCV_SPACING = (0.8, 0.8, 2.5)
GENERATOR_VERSION = 1  # bump when the anatomy changes, so cached demo data is regenerated


@dataclass
class Phantom:
    """One generated case: voxel arrays indexed (i, j, k) and the voxel-to-RAS affine."""

    image: np.ndarray  # int16 Hounsfield units
    label: np.ndarray  # uint8 BTCV labels
    affine: np.ndarray  # 4 x 4


class _Grid:
    """Voxel grid and the case's global pose (rotation about z, scale, shift) mapping world <-> anatomy."""

    def __init__(self, shape, spacing, rng: np.random.Generator):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        sx, sy, sz = self.spacing
        nx, ny, nz = self.shape
        # anatomy z of the field-of-view centre, so that the organs (z ~ 20..240 mm) are covered
        zc = 135.0 + rng.uniform(-8, 8)
        self.origin = np.array([sx * (nx - 1) / 2, sy * (ny - 1) / 2 + 10.0, zc - sz * (nz - 1) / 2])
        self.affine = np.diag([-sx, -sy, sz, 1.0])
        self.affine[:3, 3] = self.origin
        # world coordinates of each axis (the affine is diagonal, so axes are separable)
        self.wx = self.origin[0] - sx * np.arange(nx)
        self.wy = self.origin[1] - sy * np.arange(ny)
        self.wz = self.origin[2] + sz * np.arange(nz)
        self.theta = math.radians(rng.uniform(-6, 6))
        self.scale = rng.uniform(0.9, 1.08)
        self.zscale = rng.uniform(0.92, 1.08)
        self.shift = np.array([rng.uniform(-10, 10), rng.uniform(-8, 8), 0.0])

    def to_anatomy(self, x, y, z):
        """World (broadcastable) -> anatomy coordinates."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - self.shift[0], y - self.shift[1]
        return (c * dx + s * dy) / self.scale, (-s * dx + c * dy) / self.scale, z / self.zscale

    def to_world(self, ax, ay, az):
        c, s = math.cos(self.theta), math.sin(self.theta)
        ax, ay = ax * self.scale, ay * self.scale
        return c * ax - s * ay + self.shift[0], s * ax + c * ay + self.shift[1], az * self.zscale

    def box(self, lo, hi):
        """Voxel index slices covering an anatomy-space box (lo, hi: 3 values each), or None if outside."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        w = np.stack(self.to_world(corners[:, 0], corners[:, 1], corners[:, 2]), axis=1)
        idx = []
        for axis, world in enumerate((self.wx, self.wy, self.wz)):
            step = world[1] - world[0] if len(world) > 1 else 1.0
            f = (w[:, axis] - world[0]) / step
            i0, i1 = int(math.floor(f.min())) - 1, int(math.ceil(f.max())) + 2
            i0, i1 = max(i0, 0), min(i1, len(world))
            if i0 >= i1:
                return None
            idx.append(slice(i0, i1))
        return tuple(idx)

    def coords(self, box):
        """Anatomy coordinates (broadcastable to the box shape) of the voxels in ``box``."""
        x = self.wx[box[0]][:, None, None]
        y = self.wy[box[1]][None, :, None]
        z = self.wz[box[2]][None, None, :]
        return self.to_anatomy(x, y, z)


def _rot(angle_deg: float, axis: str) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


class _Painter:
    """Paints shapes into the HU image and the label map inside their bounding boxes."""

    def __init__(self, grid: _Grid, rng: np.random.Generator):
        self.g = grid
        self.rng = rng
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)

    def paint(self, box, mask, hu, label=None, only=None):
        if box is None or not mask.any():
            return
        if only is not None:
            mask = mask & only[box]
        self.hu[box][mask] = hu
        if label is not None:
            self.lab[box][mask] = label

    def ellipsoid(self, center, axes, rot=np.eye(3), wobble=0.0, n_terms=3):
        """Mask of a (perturbed) ellipsoid in anatomy coordinates; returns (box, mask)."""
        center, axes = np.asarray(center, float), np.asarray(axes, float)
        reach = axes.max() * (1 + wobble) + 2
        box = self.g.box(center - reach, center + reach)
        if box is None:
            return None, None
        x, y, z = self.g.coords(box)
        d = [x - center[0], y - center[1], z - center[2]]
        # local frame: rot's columns are the ellipsoid axes in anatomy space
        u = [(rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]) / axes[k] for k in range(3)]
        r2 = u[0] ** 2 + u[1] ** 2 + u[2] ** 2
        if wobble > 0:
            r = np.sqrt(r2) + 1e-6
            limit = 1.0
            for _ in range(n_terms):  # low-frequency radial perturbation: sum of random directional cosines
                v = self.rng.normal(size=3)
                v /= np.linalg.norm(v)
                k = self.rng.integers(1, 4)
                phase = self.rng.uniform(0, 2 * np.pi)
                cosang = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / r
                limit = limit + wobble / n_terms * np.cos(k * np.arccos(np.clip(cosang, -1, 1)) + phase)
            mask = r2 < limit**2
        else:
            mask = r2 < 1.0
        return box, np.broadcast_to(mask, tuple(s.stop - s.start for s in box))

    def tube(self, points, radii, flatten=1.0):
        """Mask of a tube of varying radius along a polyline (anatomy coordinates); returns (box, mask)."""
        pts = np.asarray(points, float)
        rad = np.broadcast_to(np.asarray(radii, float), (len(pts),))
        lo, hi = pts.min(0) - rad.max() - 2, pts.max(0) + rad.max() + 2
        box = self.g.box(lo, hi)
        if box is None:
            return None, None
        x, y, z = self.g.coords(box)
        shape = tuple(s.stop - s.start for s in box)
        x, y, z = (np.broadcast_to(a, shape) for a in (x, y, z))
        inside = np.zeros(shape, dtype=bool)
        for p0, p1, r0, r1 in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
            seg = p1 - p0
            L2 = float(seg @ seg)
            t = ((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / L2
            t = np.clip(t, 0.0, 1.0)
            dx = x - (p0[0] + t * seg[0])
            dy = (y - (p0[1] + t * seg[1])) / flatten
            dz = z - (p0[2] + t * seg[2])
            r = r0 + t * (r1 - r0)
            inside |= dx * dx + dy * dy + dz * dz < r * r
        return box, inside


def _jit(rng, scale):
    return rng.uniform(-scale, scale)


TOP = 420.0  # mm: the top of the spine and the great vessels, above any field of view


@dataclass
class _Body:
    """What the steps of :func:`make_phantom` share: the grid, the painter, the random stream (drawn in a fixed
    order: the steps run in sequence) and the body's measures drawn so far."""

    g: _Grid
    p: _Painter
    rng: np.random.Generator
    a0: float = 0.0  # torso half-width (mm)
    b0: float = 0.0  # torso half-depth (mm)
    fat_t: float = 0.0  # subcutaneous fat thickness (mm)
    wall_t: float = 0.0  # abdominal wall muscle thickness (mm)
    cavity: np.ndarray | None = None  # the abdominal cavity (inside the wall)
    spine_y: float = 0.0  # anteroposterior position of the vertebral bodies (mm)
    enh: float = 0.0  # contrast phase variation of vessels and enhancing organs (HU)
    stomach_centre: np.ndarray | None = None  # where the esophagus joins the stomach from

    def jit(self, scale):
        return _jit(self.rng, scale)

    def jitter_c(self, c, s=5.0):
        return np.asarray(c, float) + self.rng.uniform(-s, s, 3)

    def jitter_a(self, ax, s=0.1):
        return np.asarray(ax, float) * self.rng.uniform(1 - s, 1 + s, 3)

    def organ(self, box, mask, hu, key, only_cavity=True):
        self.p.paint(box, mask, hu, organ(key).id, only=self.cavity if only_cavity else None)


def make_phantom(seed: int = 0, shape=DEMO_SHAPE, spacing=DEMO_SPACING, noise_hu: float = 14.0) -> Phantom:
    """Generate one phantom. Deterministic in (seed, shape, spacing, noise_hu): the body, the organs in painting
    order (later ones overwrite earlier ones), then the scanner (partial volume, noise, quantisation)."""
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, int(seed)]))
    g = _Grid(shape, spacing, rng)
    body = _Body(g, _Painter(g, rng), rng)
    _torso(body)
    _table(body)
    _spine_and_ribs(body)
    _bowel(body)
    body.enh = rng.uniform(-25, 25)
    _upper_organs(body)
    _kidneys_and_gallbladder(body)
    _pancreas_and_vessels(body)
    hu = ndimage.gaussian_filter(body.p.hu, sigma=0.6, mode="nearest")
    hu += rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(image=image, label=body.p.lab, affine=g.affine)


def _torso(b: _Body) -> None:
    """Superellipse cross-section, slightly narrower at the top: subcutaneous fat, muscle wall, visceral fat."""
    g, rng = b.g, b.rng
    b.a0, b.b0 = rng.uniform(150, 172), rng.uniform(108, 125)
    b.fat_t = rng.uniform(12, 28)
    b.wall_t = rng.uniform(8, 13)
    x, y, z = g.coords((slice(0, g.shape[0]), slice(0, g.shape[1]), slice(0, g.shape[2])))
    taper = 1.0 - 0.0006 * np.clip(z - 120, 0, None)
    a, bb = b.a0 * taper, b.b0 * taper

    def superellipse(da, db):
        return np.abs(x / (a - da)) ** 2.6 + np.abs(y / (bb - db)) ** 2.6 < 1.0

    fat, wall = b.fat_t, b.wall_t
    b.p.hu[superellipse(0, 0)] = -95 + b.jit(10)  # subcutaneous fat
    b.p.hu[superellipse(fat, fat * 0.8)] = 52 + b.jit(6)  # muscle wall
    b.cavity = superellipse(fat + wall, fat * 0.8 + wall)
    b.p.hu[b.cavity] = -88 + b.jit(10)  # visceral fat


def _table(b: _Body) -> None:
    """The CT table under the patient, in world coordinates (the patient may lie slightly rotated on it)."""
    g = b.g
    table_y = -b.b0 - 12 + g.shift[1]
    wy, wx = g.wy[None, :, None], g.wx[:, None, None]
    table = (np.abs(wx) < 210) & (wy < table_y) & (wy > table_y - 8)
    b.p.hu[np.broadcast_to(table, g.shape)] = 180


def _spine_and_ribs(b: _Body) -> None:
    """Spine, spinal canal, paraspinal and psoas muscles, and rib cross-sections along the upper abdominal wall."""
    p, rng = b.p, b.rng
    b.spine_y = spine_y = -b.b0 + 48 + b.jit(4)
    for side in (-1, 1):  # paraspinal (erector spinae) muscles
        bx, m = p.tube([(side * 34, spine_y - 26, -60), (side * 34, spine_y - 26, TOP)], 24, flatten=0.8)
        p.paint(bx, m, 55)
        # psoas: grows towards the pelvis, lateral to the vertebral bodies
        bx, m = p.tube(
            [(side * 30, spine_y + 8, 150), (side * 42, spine_y + 14, 60), (side * 55, spine_y + 18, -40)], [4, 14, 22]
        )
        p.paint(bx, m, 50)
    bx, m = p.tube([(0, spine_y, -60), (0, spine_y + 4, 150), (0, spine_y - 4, TOP)], 19, flatten=0.85)
    p.paint(bx, m, 260 + b.jit(40))  # vertebral bodies
    bx, m = p.tube([(0, spine_y - 22, -60), (0, spine_y - 22, TOP)], 10, flatten=1.2)
    p.paint(bx, m, 450)  # posterior elements (arches, processes)
    bx, m = p.tube([(0, spine_y - 20, -60), (0, spine_y - 20, TOP)], 7)
    p.paint(bx, m, 15)  # spinal canal
    rib_z0 = rng.uniform(120, 140)
    ra, rb = b.a0 - b.fat_t - b.wall_t * 0.5, b.b0 - b.fat_t - b.wall_t * 0.5
    for zr in np.arange(rib_z0, 300, 24.0):
        for ang in np.linspace(-150, 150, 11):
            if abs(ang) < 25:
                continue
            t = math.radians(ang)
            bx, m = p.ellipsoid((ra * math.sin(t) * 0.98, rb * math.cos(t) * 0.98, zr + 6 * math.cos(t)), (5, 5, 7))
            p.paint(bx, m, 520)


def _bowel(b: _Body) -> None:
    """Bowel loops (not labelled), half of them with gas."""
    p, rng = b.p, b.rng
    for _ in range(int(rng.integers(14, 22))):
        c = (rng.uniform(-100, 100), rng.uniform(-10, b.b0 - 35), rng.uniform(0, 115))
        ax = (rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(10, 30))
        bx, m = p.ellipsoid(c, ax, _rot(rng.uniform(0, 180), "z"), wobble=0.2)
        p.paint(bx, m, 32 + b.jit(10), only=b.cavity)
        if rng.random() < 0.5:
            bx, m = p.ellipsoid((c[0], c[1] + ax[1] * 0.3, c[2]), np.array(ax) * 0.45)
            p.paint(bx, m, -850, only=b.cavity)


def _upper_organs(b: _Body) -> None:
    """Liver (right lobe + left lobe across the midline), spleen, stomach (wall, fluid, gas cap)."""
    p, rng = b.p, b.rng
    liver_hu = 108 + b.jit(12) + 0.3 * b.enh
    bx, m = p.ellipsoid(b.jitter_c((68, 2, 172)), b.jitter_a((72, 82, 62)), _rot(b.jit(8), "z"), wobble=0.08)
    b.organ(bx, m, liver_hu, "liver")
    bx, m = p.ellipsoid(b.jitter_c((-12, 42, 184)), b.jitter_a((58, 32, 36)), _rot(-15 + b.jit(8), "z"), wobble=0.1)
    b.organ(bx, m, liver_hu, "liver")
    bx, m = p.ellipsoid(b.jitter_c((-98, -32, 172)), b.jitter_a((24, 55, 48)), _rot(35 + b.jit(8), "z"), wobble=0.1)
    b.organ(bx, m, 118 + b.jit(12) + 0.3 * b.enh, "spleen")
    sc, sa = b.jitter_c((-45, 36, 168)), b.jitter_a((44, 38, 52))
    b.stomach_centre = sc
    srot = _rot(25 + b.jit(10), "z") @ _rot(b.jit(10), "y")
    bx, m = p.ellipsoid(sc, sa, srot, wobble=0.12)
    b.organ(bx, m, 55 + b.jit(8), "stomach")
    bx, lumen = p.ellipsoid(sc, sa * 0.72, srot)
    if bx is not None:
        _, ly, _ = b.g.coords(bx)
        gas_level = sc[1] + sa[1] * rng.uniform(0.1, 0.45)
        fluid = lumen & (p.lab[bx] == organ("stomach").id)
        p.hu[bx][fluid] = 18 + b.jit(8)
        p.hu[bx][fluid & np.broadcast_to(ly > gas_level, fluid.shape)] = -850


def _kidneys_and_gallbladder(b: _Body) -> None:
    """Kidneys (the left sits higher), each with a darker renal sinus; the gallbladder under the right lobe."""
    p = b.p
    for key, cx, cz, side in (("kidney_right", 66, 96, 1), ("kidney_left", -64, 106, -1)):
        kc, ka = b.jitter_c((cx, -52, cz)), b.jitter_a((26, 23, 54))
        krot = _rot(side * (25 + b.jit(8)), "z") @ _rot(side * (-12 + b.jit(5)), "y")
        bx, m = p.ellipsoid(kc, ka, krot, wobble=0.06)
        b.organ(bx, m, 175 + b.jit(15) + 0.5 * b.enh, key)
        bx, m = p.ellipsoid(kc + np.array([-side * 9, 6, 0]), ka * np.array([0.45, 0.4, 0.6]), krot)
        if bx is not None:
            p.paint(bx, m & (p.lab[bx] == organ(key).id), -20 + b.jit(15))
    bx, m = p.ellipsoid(
        b.jitter_c((52, 50, 118), 6), b.jitter_a((16, 17, 30), 0.2), _rot(20, "x") @ _rot(b.jit(15), "z"), wobble=0.08
    )
    b.organ(bx, m, 12 + b.jit(6), "gallbladder")


def _pancreas_and_vessels(b: _Body) -> None:
    """Pancreas, portal and splenic vein, aorta, inferior vena cava, esophagus (joining the stomach), adrenals."""
    p, rng, enh, spine_y = b.p, b.rng, b.enh, b.spine_y
    # pancreas: head (right, low) -> neck -> body -> tail (left, at the splenic hilum)
    pan_pts = np.array([(34, 2, 110), (30, 8, 124), (4, 14, 134), (-32, 8, 142), (-70, -6, 152)])
    pan_pts = pan_pts + rng.uniform(-5, 5, (5, 3))
    bx, m = p.tube(pan_pts, np.array([15, 14, 11, 10, 8]) * rng.uniform(0.9, 1.1), flatten=0.7)
    b.organ(bx, m, 92 + b.jit(10), "pancreas")
    # portal and splenic vein: splenic hilum -> confluence behind the pancreas neck -> liver hilum
    vein_pts = np.array([(-78, -16, 152), (-40, -4, 141), (2, 2, 134), (28, 10, 146), (48, 16, 162)])
    bx, m = p.tube(vein_pts + rng.uniform(-4, 4, (5, 3)), [5, 5.5, 7, 7.5, 6])
    b.organ(bx, m, 168 + enh, "portal_splenic_vein")
    # aorta: left-anterior of the vertebral bodies, tapering downwards
    ax_, ay_ = -16 + b.jit(4), spine_y + 32 + b.jit(4)
    bx, m = p.tube([(ax_ + 4, ay_ - 2, -40), (ax_, ay_, 120), (ax_ - 2, ay_ - 6, TOP)], [9, 11, 12.5])
    b.organ(bx, m, 195 + enh, "aorta", only_cavity=False)
    # inferior vena cava: right of the aorta, intrahepatic at the top
    ix, iy = 22 + b.jit(4), spine_y + 36 + b.jit(4)
    bx, m = p.tube([(ix - 6, iy - 4, -40), (ix, iy, 120), (ix + 6, iy + 6, 220)], [10, 12, 13], flatten=0.75)
    b.organ(bx, m, 140 + 0.8 * enh, "ivc", only_cavity=False)
    # esophagus: descends left-anterior of the spine and joins the stomach (cardia)
    card = b.stomach_centre + np.array([18, -12, 22]) + rng.uniform(-4, 4, 3)
    path = [(-8, spine_y + 40, TOP), (-14, spine_y + 44, 230), tuple(card)]
    bx, m = p.tube(path, 8)
    b.organ(bx, m, 45 + b.jit(6), "esophagus", only_cavity=False)
    bx, m = p.tube(path, 2.2)
    p.paint(bx, m, -800)  # air in the lumen; the label keeps the whole tube
    # adrenal glands: thin plates above and medial to the kidneys
    for key, c, ang in (("adrenal_right", (42, -40, 150), 30), ("adrenal_left", (-40, -36, 156), -30)):
        bx, m = p.ellipsoid(b.jitter_c(c, 4), b.jitter_a((4.5, 13, 17), 0.15), _rot(ang + b.jit(10), "z"), wobble=0.15)
        b.organ(bx, m, 32 + b.jit(8), key)


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    num_cases: int = 12,
    num_validation: int = 2,
    seed: int = 0,
    shape=DEMO_SHAPE,
    spacing=DEMO_SPACING,
    progress: bool = False,
) -> Path:
    """Write ``num_cases`` phantoms (``imagesTr/phantomXXXX.nii.gz``, ``labelsTr/...``) and a datalist.

    The datalist ``dataset.json`` has MONAI's ``training`` / ``validation`` lists (the last
    ``num_validation`` cases validate) with paths relative to ``out_dir``. Files already present with the
    same generator settings are kept (the settings are recorded in ``phantom.json``). Returns the datalist path.
    """
    out = Path(out_dir)
    settings = {
        "generator_version": GENERATOR_VERSION,
        "num_cases": int(num_cases),
        "num_validation": int(num_validation),
        "seed": int(seed),
        "shape": [int(s) for s in shape],
        "spacing": [float(s) for s in spacing],
    }
    datalist_path = out / "dataset.json"
    stamp = out / "phantom.json"
    if datalist_path.exists() and stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")) == settings:
        return datalist_path
    if not 0 < num_validation < num_cases:
        raise ValueError(f"num_validation must be in 1..{num_cases - 1}, got {num_validation}")
    items = []
    cases = range(num_cases)
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc=f"generating demo phantoms in {out}", unit="case")
    for i in cases:
        ph = make_phantom(seed=seed * 10007 + i, shape=shape, spacing=spacing)
        name = f"phantom{i:04d}.nii.gz"
        atomic_write_bytes(out / "imagesTr" / name, nifti_bytes(ph.image, ph.affine))
        atomic_write_bytes(out / "labelsTr" / name, nifti_bytes(ph.label, ph.affine))
        items.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    n_train = num_cases - num_validation
    datalist = {
        "description": "synthetic abdominal CT phantoms with the 13 BTCV organs (common.phantom)",
        "labels": {"0": "background", **{str(o.id): o.name for o in BTCV_ORGANS}},
        "training": items[:n_train],
        "validation": items[n_train:],
    }
    atomic_write_text(datalist_path, json.dumps(datalist, indent=2) + "\n")
    atomic_write_text(stamp, json.dumps(settings, indent=2) + "\n")
    return datalist_path


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, used by tests to check determinism."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m common.phantom",
        description="Write synthetic abdominal CT phantoms with the 13 BTCV organs and a MONAI datalist.",
    )
    ap.add_argument("out_dir", help="output folder (imagesTr/, labelsTr/, dataset.json)")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--validation", type=int, default=2, help="how many of the cases form the validation list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=3, default=list(DEMO_SHAPE), metavar=("X", "Y", "Z"))
    ap.add_argument("--spacing", type=float, nargs=3, default=list(DEMO_SPACING), metavar=("SX", "SY", "SZ"))
    ap.add_argument("--btcv-size", action="store_true", help=f"use {BTCV_SHAPE} at {BTCV_SPACING} mm")
    args = ap.parse_args(argv)
    shape, spacing = (BTCV_SHAPE, BTCV_SPACING) if args.btcv_size else (args.shape, args.spacing)
    path = write_phantom_dataset(args.out_dir, args.cases, args.validation, args.seed, shape, spacing, progress=True)
    print(f"datalist: {path}")


if __name__ == "__main__":
    main()
