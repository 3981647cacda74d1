"""Procedural 3D abdominal CT phantoms with exact labels, written like real data (MSD NIfTI).

Anatomy is modelled in an internal patient frame (mm; +x patient's LEFT, +y anterior,
+z superior) and rasterised at the voxel centres through the affine, so random spacing,
axis order/flips and obliquity are exact and the label always matches the image.

The affine follows nibabel/NIfTI RAS+ exactly: +x points to the patient's RIGHT (axcode "R"),
so the liver has world x > 0 and the spleen and left kidney x < 0, as in NIfTI converted
from DICOM (LPS) by dcm2niix/ITK/nibabel. The internal frame is RAS+ with x mirrored.

Randomness comes from three independent streams spawned from the seed: anatomy, geometry
(spacing, orientation, placement, blur) and noise. The same seed therefore gives the same
patient under any ``PhantomSpec``: only the sampling grid changes.

The label is the hard geometric model at each voxel centre; the HU image is the same model
blurred by ~0.5-1 voxel (partial volume) plus Gaussian noise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

PHANTOM_LABELS: tuple[tuple[int, str], ...] = (
    (1, "liver"), (2, "spleen"), (3, "kidney_right"), (4, "kidney_left"), (5, "pancreas"), (6, "stomach"),
    (7, "gallbladder"), (8, "aorta"), (9, "inferior_vena_cava"), (10, "liver_tumor"), (11, "pancreas_tumor"),
    (12, "kidney_tumor"),
)
_ID = {name: value for value, name in PHANTOM_LABELS}

COMMON_ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "LPI")
DATASET_NAME = "latentseg_phantoms"

_AXIS_OF_CODE: dict[str, tuple[int, float]] = {
    "R": (0, 1.0), "L": (0, -1.0), "P": (1, -1.0), "A": (1, 1.0), "I": (2, -1.0), "S": (2, 1.0),
}
# Internal anatomy frame from RAS+ world: x mirrored (+x = patient's left).
_ANATOMY_FROM_RAS = np.diag([-1.0, 1.0, 1.0, 1.0])
_CHUNK_VOXELS = 1 << 20
_HU_MIN, _HU_MAX = -1024.0, 3071.0

# Tissue classes of the body model (internal; organs may only occupy the abdominal cavity).
_AIR, _FAT, _MUSCLE, _BONE, _CAVITY, _TABLE = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class PhantomSpec:
    """Sampling grid of a phantom; ``None`` fields are drawn per case from the seed.

    ``shape``, ``spacing`` and ``fov_mm`` are in voxel-axis order (i, j, k). With ``shape``
    given and ``spacing`` left out, the spacing is chosen so the grid covers ``fov_mm``
    (±10 %), so small test grids still show the whole abdomen.
    """

    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    oblique_degrees: float = 0.0
    fov_mm: tuple[float, float, float] = (400.0, 400.0, 200.0)
    noise_hu: float = 12.0
    noncontrast_prob: float = 0.0  # share of cases rendered as a scan without contrast (see _NONCONTRAST_HU)

    def __post_init__(self) -> None:
        if self.shape is not None and (len(self.shape) != 3 or any(int(n) != n or n < 1 for n in self.shape)):
            raise ValueError(f"shape must be three positive integers, got {self.shape!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or any(not s > 0 for s in self.spacing)):
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        if len(self.fov_mm) != 3 or any(not f > 0 for f in self.fov_mm):
            raise ValueError(f"fov_mm must be three positive numbers (mm), got {self.fov_mm!r}")
        if self.orientation is not None:
            _axis_directions(self.orientation)
        if not 0.0 <= self.oblique_degrees <= 90.0:
            raise ValueError(f"oblique_degrees must be in [0, 90], got {self.oblique_degrees}")
        if not self.noise_hu >= 0.0:
            raise ValueError(f"noise_hu must be >= 0, got {self.noise_hu}")
        if not 0.0 <= self.noncontrast_prob <= 1.0:
            raise ValueError(f"noncontrast_prob must be in [0, 1], got {self.noncontrast_prob}")


@dataclass(frozen=True)
class Phantom:
    """One case: ``image`` int16 HU and ``label`` uint8 (PHANTOM_LABELS), ``affine`` voxel -> RAS+ mm."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _axis_directions(orientation: str) -> np.ndarray:
    """(3, 3) matrix whose column a is the RAS+ unit direction of voxel axis a for axcodes like "LPS"."""
    codes = orientation.upper() if isinstance(orientation, str) else ""
    if len(codes) != 3 or any(c not in _AXIS_OF_CODE for c in codes) or len({_AXIS_OF_CODE[c][0] for c in codes}) != 3:
        raise ValueError(
            f"orientation must be three axcodes, one each of L/R, A/P, S/I (like RAS, LPS, LAS), got {orientation!r}"
        )
    directions = np.zeros((3, 3))
    for axis, code in enumerate(codes):
        world_axis, sign = _AXIS_OF_CODE[code]
        directions[world_axis, axis] = sign
    return directions


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation about z, then y, then x (degrees)."""
    cy, sy = np.cos(np.deg2rad(pitch)), np.sin(np.deg2rad(pitch))
    cx, sx = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return _rotation_z(yaw) @ ry @ rx


# --------------------------------------------------------------------------------------------
# Grid geometry


@dataclass(frozen=True)
class _Grid:
    """A voxel grid; ``affine`` maps voxels to RAS+, ``frame`` maps voxels to the anatomy frame."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def frame(self) -> np.ndarray:
        return _ANATOMY_FROM_RAS @ self.affine

    def boxes(self, lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[slice, slice, slice]]:
        """Voxel sub-boxes (chunks of at most ~1 M voxels) covering the world AABB [lo, hi]."""
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        ijk = (np.linalg.inv(self.frame) @ corners.T)[:3]
        start = np.maximum(np.floor(ijk.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(ijk.max(axis=1)).astype(int) + 1, self.shape)
        if np.any(stop <= start):
            return
        plane = int((stop[1] - start[1]) * (stop[2] - start[2]))
        step = max(1, _CHUNK_VOXELS // plane)
        for i0 in range(int(start[0]), int(stop[0]), step):
            yield (slice(i0, min(i0 + step, int(stop[0]))), slice(int(start[1]), int(stop[1])),
                   slice(int(start[2]), int(stop[2])))

    def world(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anatomy-frame x, y, z (float32, broadcast to the box) of the voxel centres in ``box``."""
        idx = [np.arange(s.start, s.stop, dtype=np.float64) for s in box]
        out = []
        for row in self.frame[:3]:
            value = (row[0] * idx[0])[:, None, None] + (row[1] * idx[1])[None, :, None]
            out.append((value + (row[2] * idx[2] + row[3])[None, None, :]).astype(np.float32))
        return out[0], out[1], out[2]


@dataclass
class _Canvas:
    """Arrays the structures paint into; lives for one ``generate_phantom`` call."""

    hu: np.ndarray
    label: np.ndarray
    tissue: np.ndarray


@dataclass(frozen=True)
class _Chunk:
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    hu: np.ndarray
    label: np.ndarray
    tissue: np.ndarray


@dataclass(frozen=True)
class _Structure:
    lo: np.ndarray
    hi: np.ndarray
    paint: Callable[[_Chunk], None]


def _rasterise(grid: _Grid, canvas: _Canvas, structure: _Structure) -> None:
    for box in grid.boxes(structure.lo, structure.hi):
        x, y, z = grid.world(box)
        structure.paint(_Chunk(x, y, z, canvas.hu[box], canvas.label[box], canvas.tissue[box]))


# --------------------------------------------------------------------------------------------
# Shapes: smooth random blobs and tubes in world coordinates


@dataclass(frozen=True)
class _Blob:
    """An ellipsoid whose radius is modulated by low-frequency waves over the unit sphere."""

    center: np.ndarray
    rotation: np.ndarray  # columns = local axes in world
    radii: np.ndarray
    wave_k: np.ndarray  # (K, 3) frequencies in local unit coordinates
    wave_phase: np.ndarray  # (K,)
    wave_amp: np.ndarray  # (K,)

    @property
    def max_deform(self) -> float:
        return float(np.abs(self.wave_amp).sum())

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(axis=1)) * (1.0 + self.max_deform) + 1.0
        return self.center - half, self.center + half

    def local(self, c: _Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dx, dy, dz = c.x - np.float32(self.center[0]), c.y - np.float32(self.center[1]), c.z - np.float32(self.center[2])
        m = (self.rotation / self.radii[None, :]).astype(np.float32)
        return (m[0, 0] * dx + m[1, 0] * dy + m[2, 0] * dz, m[0, 1] * dx + m[1, 1] * dy + m[2, 1] * dz,
                m[0, 2] * dx + m[1, 2] * dy + m[2, 2] * dz)

    def rho(self, c: _Chunk) -> np.ndarray:
        """Normalised radius: < 1 inside, 0 at the centre."""
        u, v, w = self.local(c)
        bound = np.float32(1.0)
        for k, phase, amp in zip(self.wave_k, self.wave_phase, self.wave_amp, strict=True):
            bound = bound + np.float32(amp) * np.sin(np.float32(k[0]) * u + np.float32(k[1]) * v
                                                     + np.float32(k[2]) * w + np.float32(phase))
        return np.sqrt(u * u + v * v + w * w) / bound

    def local_of_world(self, point: np.ndarray) -> np.ndarray:
        return (self.rotation.T @ (point - self.center)) / self.radii


def _make_blob(rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, rotation: np.ndarray,
               deform: float, size_jitter: float = 0.18, shift_mm: float = 12.0) -> _Blob:
    scale = rng.uniform(1 - size_jitter, 1 + size_jitter) * rng.uniform(0.94, 1.06, size=3)
    waves = 4
    directions = rng.normal(size=(waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return _Blob(
        center=np.asarray(center, float) + rng.uniform(-shift_mm, shift_mm, size=3),
        rotation=rotation,
        radii=np.asarray(radii, float) * scale,
        wave_k=directions * rng.uniform(1.5, 3.5, size=(waves, 1)),
        wave_phase=rng.uniform(0, 2 * np.pi, size=waves),
        wave_amp=rng.uniform(0.3, 1.0, size=waves) * deform / waves * 1.5,
    )


@dataclass(frozen=True)
class _Tube:
    """A tube along a polyline with linearly varying radius, modulated along its length."""

    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)
    wave_amp: float
    wave_freq: float
    wave_phase: float

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        pad = self.radii.max() * (1.0 + self.wave_amp) + 1.0
        return self.points.min(axis=0) - pad, self.points.max(axis=0) + pad

    def rho(self, c: _Chunk) -> np.ndarray:
        """Normalised distance to the centreline (< 1 inside)."""
        best = None
        n = len(self.points) - 1
        for s in range(n):
            a, b = self.points[s], self.points[s + 1]
            ab = b - a
            length2 = float(ab @ ab)
            px, py, pz = c.x - np.float32(a[0]), c.y - np.float32(a[1]), c.z - np.float32(a[2])
            t = (px * np.float32(ab[0]) + py * np.float32(ab[1]) + pz * np.float32(ab[2])) / np.float32(length2)
            np.clip(t, 0.0, 1.0, out=t)
            ex, ey, ez = px - t * np.float32(ab[0]), py - t * np.float32(ab[1]), pz - t * np.float32(ab[2])
            radius = np.float32(self.radii[s]) + t * np.float32(self.radii[s + 1] - self.radii[s])
            radius *= 1.0 + np.float32(self.wave_amp) * np.sin(
                np.float32(self.wave_freq) * (t + np.float32(s)) / np.float32(n) + np.float32(self.wave_phase))
            value = np.sqrt(ex * ex + ey * ey + ez * ez) / radius
            best = value if best is None else np.minimum(best, value)
        assert best is not None
        return best


def _bezier(control: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = control
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


@dataclass(frozen=True)
class _Spheroid:
    center: np.ndarray
    rotation: np.ndarray
    radii: np.ndarray

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        half = self.radii.max() + 1.0
        return self.center - half, self.center + half

    def rho(self, c: _Chunk) -> np.ndarray:
        blob = _Blob(self.center, self.rotation, self.radii, np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        u, v, w = blob.local(c)
        return np.sqrt(u * u + v * v + w * w)


def _random_spheroid(rng: np.random.Generator, center: np.ndarray, radius: float) -> _Spheroid:
    radii = radius * np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)])
    rotation = _rotation(*rng.uniform(-180, 180, size=3))
    return _Spheroid(np.asarray(center, float), rotation, radii)


def _point_in_unit_ball(rng: np.random.Generator, max_radius: float) -> np.ndarray:
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return direction * max_radius * rng.uniform(0.0, 1.0) ** (1 / 3)


def _tumours_in_blob(rng: np.random.Generator, organ: _Blob, count: int, radius_mm: tuple[float, float],
                     margin: float = 0.08) -> list[_Spheroid]:
    """Spheroids provably inside the organ's deformed ellipsoid (radius >= 1 - max_deform in unit coords)."""
    inner = 1.0 - organ.max_deform - margin
    smallest = float(organ.radii.min())
    tumours = []
    for _ in range(count):
        radius = rng.uniform(*radius_mm)
        radius = min(radius, 0.6 * inner * smallest)
        slack = inner - radius / smallest
        if radius < 2.0 or slack <= 0:
            continue
        u = _point_in_unit_ball(rng, min(slack, 0.6))
        center = organ.center + organ.rotation @ (u * organ.radii)
        tumours.append(_random_spheroid(rng, center, radius))
    return tumours


# --------------------------------------------------------------------------------------------
# Anatomy


@dataclass(frozen=True)
class _Body:
    a: float  # half width (x)
    b: float  # half depth (y), anterior
    b_post: float  # half depth posterior
    fat: float
    muscle: float
    hu_fat: float
    hu_muscle: float
    hu_cancellous: float
    hu_cortex: float
    disc_phase: float
    rib_phase: float
    table: bool
    sx: float  # anatomy scale vs reference body (160 x 115 mm)
    sy: float


def _ellipse_q(x: np.ndarray, y: np.ndarray, a: float, b_ant: float, b_post: float) -> np.ndarray:
    yb = np.where(y >= 0, y / np.float32(b_ant), y / np.float32(b_post))
    xa = x / np.float32(a)
    return xa * xa + yb * yb


def _paint_body(body: _Body) -> Callable[[_Chunk], None]:
    def paint(c: _Chunk) -> None:
        x, y, z = c.x, c.y, c.z
        inner_a, inner_b, inner_p = (body.a - body.fat - body.muscle, body.b - body.fat - body.muscle,
                                     body.b_post - body.fat - body.muscle)
        outer = _ellipse_q(x, y, body.a, body.b, body.b_post) < 1
        wall = _ellipse_q(x, y, body.a - body.fat, body.b - body.fat, body.b_post - body.fat) < 1
        cavity = _ellipse_q(x, y, inner_a, inner_b, inner_p) < 1
        c.hu[...] = -1000.0
        c.tissue[...] = _AIR
        c.hu[outer] = body.hu_fat
        c.tissue[outer] = _FAT
        c.hu[wall] = body.hu_muscle
        c.tissue[wall] = _MUSCLE
        c.hu[cavity] = body.hu_fat + 5.0
        c.tissue[cavity] = _CAVITY
        # Ribs: bands in the muscle wall of the upper abdomen, sloping down anteriorly.
        rib_coord = (z + np.float32(0.8) * y) / np.float32(body.sy)
        phase = np.mod(rib_coord / np.float32(28.0) + np.float32(body.rib_phase), 1.0)
        rib = wall & ~cavity & (phase < 0.3) & (rib_coord > 40.0) & ~((y > 0.55 * body.b) & (np.abs(x) < 0.45 * body.a))
        c.hu[rib] = 650.0
        c.tissue[rib] = _BONE
        sx, sy = np.float32(body.sx), np.float32(body.sy)
        xr, yr = x / sx, y / sy  # reference-body coordinates
        # Paraspinal and psoas muscles.
        para = ((np.abs(xr) - 33) / 25) ** 2 + ((yr + 72) / 19) ** 2 < 1
        psoas_r = np.clip(12.0 - 0.12 * z, 6.0, 24.0)
        psoas = ((np.abs(xr) - 38) ** 2 + ((yr + 34) * 1.2) ** 2) < psoas_r**2
        muscles = (para | psoas) & (c.tissue >= _MUSCLE)
        c.hu[muscles] = body.hu_muscle
        c.tissue[muscles] = _MUSCLE
        # Vertebra: body with cortical rim, discs, canal, arch, spinous and transverse processes.
        vq = (xr / 22) ** 2 + ((yr + 35) / 17) ** 2
        disc = np.mod(z / np.float32(34.0) + np.float32(body.disc_phase), 1.0) < 0.24
        vb = vq < 1
        bone_vb = vb & ~disc
        c.hu[bone_vb & (vq > 0.72)] = body.hu_cortex
        c.hu[bone_vb & (vq <= 0.72)] = body.hu_cancellous
        c.hu[vb & disc] = 90.0
        c.tissue[vb] = _BONE
        r2 = xr * xr + (yr + 62) ** 2
        arch = (r2 < 15.0**2) & (yr < -50)
        canal = r2 < 8.5**2
        spinous = (np.abs(xr) < 4) & (yr < -62) & (yr > -90)
        vertebra_phase = np.mod(z / np.float32(34.0) + np.float32(body.disc_phase), 1.0)
        transverse = (np.abs(yr + 58) < 4) & (np.abs(xr) < 40) & (vertebra_phase > 0.5) & (vertebra_phase < 0.75)
        elements = (arch | spinous | transverse) & ~canal & ~vb
        c.hu[elements] = 0.8 * body.hu_cortex
        c.tissue[elements] = _BONE
        c.hu[canal] = 15.0
        c.tissue[canal] = _BONE
        if body.table:
            top = -body.b_post - 18.0 + 0.0006 * x * x
            shell = (np.abs(x) < 230) & ((np.abs(y - top) < 2.5) | (np.abs(y - top + 45.0) < 2.5))
            foam = (np.abs(x) < 230) & (y < top) & (y > top - 45.0) & ~shell
            c.hu[shell & ~outer] = 180.0
            c.hu[foam & ~outer] = -900.0
            c.tissue[(shell | foam) & ~outer] = _TABLE

    return paint


def _paint_in_cavity(shape: _Blob | _Tube, fill: Callable[[_Chunk, np.ndarray, np.ndarray], np.ndarray]
                     ) -> Callable[[_Chunk], None]:
    """Fill bowel-like content (label 0) where the shape lies in free abdominal cavity."""

    def paint(c: _Chunk) -> None:
        rho = shape.rho(c)
        mask = (rho < 1) & (c.tissue == _CAVITY) & (c.label == 0)
        if mask.any():
            c.hu[mask] = fill(c, rho, mask)

    return paint


def _bowel_fill(content: str, hu_wall: float, hu_content: float, level_y: float) -> Callable[
        [_Chunk, np.ndarray, np.ndarray], np.ndarray]:
    def fill(c: _Chunk, rho: np.ndarray, mask: np.ndarray) -> np.ndarray:
        r = rho[mask]
        values = np.full(r.shape, hu_content, dtype=np.float32)
        if content == "level":
            y = np.broadcast_to(c.y, rho.shape)[mask]
            values = np.where(y > level_y, np.float32(-900.0), values)
        elif content == "stool":
            x, y, z = (np.broadcast_to(v, rho.shape)[mask] for v in (c.x, c.y, c.z))
            mottle = (np.sin(0.55 * x + 1.7 * np.sin(0.21 * y + 0.3 * z)) * np.sin(0.47 * y + 1.5 * np.sin(0.19 * z + 0.23 * x))
                      * np.sin(0.41 * z + 0.37 * x + 1.3 * np.sin(0.17 * x)))
            values = np.where(mottle > 0.15, np.float32(-850.0), np.float32(hu_content))
        return np.where(r > 0.8, np.float32(hu_wall), values)

    return fill


def _paint_organ(shape: _Blob | _Tube, label: int, fill: Callable[[_Chunk, np.ndarray, np.ndarray], np.ndarray]
                 ) -> Callable[[_Chunk], None]:
    def paint(c: _Chunk) -> None:
        rho = shape.rho(c)
        mask = (rho < 1) & (c.tissue == _CAVITY)
        if mask.any():
            c.label[mask] = label
            c.hu[mask] = fill(c, rho, mask)

    return paint


def _paint_union_organ(shapes: tuple[_Blob, ...], label: int, hu: float) -> Callable[[_Chunk], None]:
    def paint(c: _Chunk) -> None:
        inside = np.zeros(np.broadcast_shapes(c.x.shape, c.y.shape, c.z.shape), dtype=bool)
        for shape in shapes:
            inside |= shape.rho(c) < 1
        mask = inside & (c.tissue == _CAVITY)
        c.label[mask] = label
        c.hu[mask] = hu

    return paint


def _paint_inside(shape: _Blob | _Tube | _Spheroid, organ: int, label: int | None, hu: float,
                  rim_hu: float | None = None) -> Callable[[_Chunk], None]:
    """Paint ``shape`` only where the label is currently ``organ`` (vessels in the liver, tumours)."""

    def paint(c: _Chunk) -> None:
        rho = shape.rho(c)
        mask = (rho < 1) & (c.label == organ)
        if not mask.any():
            return
        if label is not None:
            c.label[mask] = label
        if rim_hu is None:
            c.hu[mask] = hu
        else:
            c.hu[mask] = np.where(rho[mask] > 0.8, np.float32(rim_hu), np.float32(hu))

    return paint


def _constant(hu: float) -> Callable[[_Chunk, np.ndarray, np.ndarray], np.ndarray]:
    return lambda c, rho, mask: np.float32(hu)


def _anatomy(rng: np.random.Generator) -> tuple[list[_Structure], float]:
    """All structures in paint order (later wins), and the z of the abdomen's centre of interest."""
    a, b = rng.uniform(140, 180), rng.uniform(100, 130)
    body = _Body(
        a=a, b=b, b_post=b * rng.uniform(0.85, 0.95), fat=rng.uniform(8, 30), muscle=rng.uniform(7, 14),
        hu_fat=rng.uniform(-115, -85), hu_muscle=rng.uniform(42, 58), hu_cancellous=rng.uniform(380, 480),
        hu_cortex=rng.uniform(800, 1000), disc_phase=rng.uniform(0, 1), rib_phase=rng.uniform(0, 1),
        table=bool(rng.random() < 0.8), sx=a / 160.0, sy=b / 115.0,
    )
    scale = np.array([body.sx, body.sy, 1.0])
    inner = np.array([a - body.fat - body.muscle, b - body.fat - body.muscle])

    def at(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x, y, z]) * scale

    def jitter_hu(hu: float, sd: float = 5.0) -> float:
        return float(hu + rng.normal(0, sd))

    big = np.array([1e4, 1e4, 1e4])
    structures = [_Structure(-big, big, _paint_body(body))]

    # Bowel: small-bowel loops and colon in the cavity (label 0), overwritten by organs later.
    def bowel_content() -> tuple[str, float]:
        kind = str(rng.choice(["fluid", "gas", "level", "stool", "contrast"], p=[0.35, 0.15, 0.25, 0.15, 0.10]))
        hu_content = {"fluid": rng.uniform(0, 25), "gas": rng.uniform(-950, -850), "level": rng.uniform(0, 20),
                      "stool": rng.uniform(-40, 30), "contrast": rng.uniform(180, 300)}[kind]
        return kind, float(hu_content)

    for _ in range(int(rng.integers(30, 55))):
        center = np.array([rng.uniform(-0.8, 0.8) * inner[0], rng.uniform(-0.3, 0.85) * inner[1],
                           rng.uniform(-110, 50)])
        radius = rng.uniform(10, 20)
        blob = _make_blob(rng, center, np.array([radius, radius, radius * rng.uniform(1.0, 2.5)]),
                          _rotation(*rng.uniform(-90, 90, size=3)), deform=0.15, size_jitter=0.1, shift_mm=0)
        kind, hu_content = bowel_content()
        fill = _bowel_fill(kind, rng.uniform(30, 50), hu_content, float(blob.center[1] + 0.3 * radius))
        lo, hi = blob.aabb()
        structures.append(_Structure(lo, hi, _paint_in_cavity(blob, fill)))
    colon = [
        [at(-105, -10, -110), at(-110, -5, -40), at(-100, 0, 15)],
        [at(-100, 0, 15), at(0, 75, -10), at(100, 0, 35)],
        [at(100, 0, 35), at(110, -10, -30), at(100, -15, -110)],
    ]
    for control in colon:
        points = _bezier(np.array(control) + rng.uniform(-10, 10, size=(3, 3)), 7)
        tube = _Tube(points, np.full(len(points), rng.uniform(16, 24)), 0.2, rng.uniform(8, 20), rng.uniform(0, 6.3))
        kind, hu_content = bowel_content()
        fill = _bowel_fill("stool" if kind in ("fluid", "contrast") else kind, 40.0, hu_content,
                           float(points[:, 1].mean() + 5))
        lo, hi = tube.aabb()
        structures.append(_Structure(lo, hi, _paint_in_cavity(tube, fill)))

    # Organs (later wins where they touch).
    liver_hu = jitter_hu(rng.uniform(55, 65), 3)
    right_lobe = _make_blob(rng, at(-60, 5, 45), np.array([80, 85, 75]) * [body.sx, body.sy, 1.0],
                            _rotation(rng.uniform(-15, 15), rng.uniform(-8, 8), rng.uniform(-8, 8)), deform=0.18)
    left_lobe = _make_blob(rng, at(15, 40, 65), np.array([50, 35, 35]),
                           _rotation(rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-10, 10)), deform=0.2)
    lo = np.minimum(right_lobe.aabb()[0], left_lobe.aabb()[0])
    hi = np.maximum(right_lobe.aabb()[1], left_lobe.aabb()[1])
    structures.append(_Structure(lo, hi, _paint_union_organ((right_lobe, left_lobe), _ID["liver"], liver_hu)))
    porta = right_lobe.center + np.array([35.0, 5.0, -15.0])
    for _ in range(int(rng.integers(4, 8))):
        direction = rng.normal(size=3) * [1.0, 0.6, 0.8] + [-0.8, 0.0, 0.3]
        end = porta + direction / np.linalg.norm(direction) * rng.uniform(40, 90)
        r0 = rng.uniform(4, 7)
        vessel = _Tube(np.array([porta, (porta + end) / 2 + rng.normal(0, 6, 3), end]),
                       np.array([r0, 0.7 * r0, 0.35 * r0]), 0.1, 5.0, 0.0)
        lo, hi = vessel.aabb()
        structures.append(_Structure(lo, hi, _paint_inside(vessel, _ID["liver"], None, jitter_hu(160, 12))))

    stomach = _make_blob(rng, at(55, 5, 65), np.array([48, 40, 55]),
                         _rotation(rng.uniform(-35, 5), rng.uniform(-15, 15), rng.uniform(-15, 15)), deform=0.2)
    wall_hu, lumen_hu = jitter_hu(42, 4), float(rng.uniform(5, 20))
    gas_level = stomach.center[1] + stomach.radii[1] * rng.uniform(0.1, 0.7) if rng.random() < 0.7 else np.inf

    def stomach_fill(c: _Chunk, rho: np.ndarray, mask: np.ndarray) -> np.ndarray:
        y = np.broadcast_to(c.y, rho.shape)[mask]
        lumen = np.where(y > gas_level, np.float32(-900.0), np.float32(lumen_hu))
        return np.where(rho[mask] > 0.86, np.float32(wall_hu), lumen)

    lo, hi = stomach.aabb()
    structures.append(_Structure(lo, hi, _paint_organ(stomach, _ID["stomach"], stomach_fill)))

    spleen = _make_blob(rng, at(88, -45, 55), np.array([22, 50, 50]),
                        _rotation(rng.uniform(-45, -20), rng.uniform(-10, 10), rng.uniform(-10, 10)), deform=0.2)
    lo, hi = spleen.aabb()
    structures.append(_Structure(lo, hi, _paint_organ(spleen, _ID["spleen"], _constant(jitter_hu(45, 4)))))

    head, neck = at(-28, 14, 0), at(0, 24, 12)
    body_point, tail = at(38, 18, 22), at(75, -18, 32)
    pancreas_points = np.concatenate([_bezier(np.array([head, neck, body_point]), 5),
                                      _bezier(np.array([body_point, (body_point + tail) / 2 + [0, 8, 0], tail]), 5)[1:]])
    pancreas_points += rng.uniform(-10, 10, size=3)
    pancreas_radii = np.interp(np.linspace(0, 1, len(pancreas_points)), [0, 0.3, 1], [20, 12, 10]) * rng.uniform(0.85, 1.15)
    pancreas = _Tube(pancreas_points, pancreas_radii, 0.12, rng.uniform(8, 16), rng.uniform(0, 6.3))
    lo, hi = pancreas.aabb()
    structures.append(_Structure(lo, hi, _paint_organ(pancreas, _ID["pancreas"], _constant(jitter_hu(40, 4)))))

    kidneys = {}
    for name, side, z in (("kidney_right", -1.0, -15.0), ("kidney_left", 1.0, 0.0)):
        kidney = _make_blob(rng, at(side * 70, -45, z), np.array([27, 22, 55]),
                            _rotation(side * rng.uniform(20, 40), side * rng.uniform(-15, -5), rng.uniform(-10, 10)),
                            deform=0.1, shift_mm=10)
        kidneys[name] = kidney
        cortex, medulla = jitter_hu(165, 10), jitter_hu(105, 10)
        sinus = float(rng.uniform(-40, 15))
        medial = -side

        def kidney_fill(c: _Chunk, rho: np.ndarray, mask: np.ndarray, kidney: _Blob = kidney, medial: float = medial,
                        cortex: float = cortex, medulla: float = medulla, sinus: float = sinus) -> np.ndarray:
            u, _, w = (np.broadcast_to(v, rho.shape)[mask] for v in kidney.local(c))
            r = rho[mask]
            values = np.where(r > 0.72, np.float32(cortex), np.float32(medulla))
            hilum = (u * np.float32(medial) > 0.15) & (r < 0.72) & (np.abs(w) < 0.45)
            return np.where(hilum, np.float32(sinus), values)

        lo, hi = kidney.aabb()
        structures.append(_Structure(lo, hi, _paint_organ(kidney, _ID[name], kidney_fill)))

    if rng.random() < 0.95:
        gallbladder = _make_blob(rng, at(-42, 42, 8), np.array([15, 15, 32]),
                                 _rotation(rng.uniform(-30, 30), rng.uniform(-30, -10), rng.uniform(-35, -15)),
                                 deform=0.12, shift_mm=8)
        lo, hi = gallbladder.aabb()
        structures.append(_Structure(lo, hi, _paint_organ(gallbladder, _ID["gallbladder"],
                                                          _constant(float(rng.uniform(5, 15))))))

    ivc_points = np.array([at(-22, -2, -130), at(-24, 0, -20), at(-26, 2, 60), at(-20, -2, 140)])
    ivc_points[:, :2] += rng.uniform(-5, 5, size=2)
    ivc = _Tube(ivc_points, np.full(4, rng.uniform(9, 12)), 0.12, rng.uniform(3, 8), rng.uniform(0, 6.3))
    lo, hi = ivc.aabb()
    structures.append(_Structure(lo, hi, _paint_organ(ivc, _ID["inferior_vena_cava"],
                                                      _constant(float(rng.uniform(120, 160))))))
    aorta_points = np.array([at(14, -5, -85), at(16, -6, -10), at(12, -8, 70), at(8, -15, 160)])
    aorta_points[:, :2] += rng.uniform(-5, 5, size=2)
    aorta = _Tube(aorta_points, np.array([9.5, 10.5, 11.5, 12.5]) * rng.uniform(0.9, 1.15), 0.05, 4.0, 0.0)
    lo, hi = aorta.aabb()
    structures.append(_Structure(lo, hi, _paint_organ(aorta, _ID["aorta"], _constant(float(rng.uniform(180, 250))))))

    # Tumours, painted only where their organ is.
    if rng.random() < 0.85:
        for tumour in _tumours_in_blob(rng, right_lobe, int(rng.integers(1, 4)), (6.0, 25.0)):
            lo, hi = tumour.aabb()
            rim = float(rng.uniform(70, 100)) if rng.random() < 0.3 else None
            structures.append(_Structure(lo, hi, _paint_inside(tumour, _ID["liver"], _ID["liver_tumor"],
                                                               float(rng.uniform(20, 35)), rim)))
    if rng.random() < 0.7:
        index = int(rng.integers(0, 4))  # head or neck of the pancreas
        center = pancreas.points[index]
        near = np.linalg.norm(pancreas.points - center, axis=1) < 3 * pancreas.radii.max()
        radius = rng.uniform(0.45, 0.7) * (1 - pancreas.wave_amp) * pancreas.radii[near].min()
        tumour = _random_spheroid(rng, center, radius)
        lo, hi = tumour.aabb()
        structures.append(_Structure(lo, hi, _paint_inside(tumour, _ID["pancreas"], _ID["pancreas_tumor"],
                                                           float(rng.uniform(25, 40)))))
    if rng.random() < 0.7:
        name = "kidney_right" if rng.random() < 0.5 else "kidney_left"
        for tumour in _tumours_in_blob(rng, kidneys[name], 1, (6.0, 14.0), margin=0.05):
            lo, hi = tumour.aabb()
            structures.append(_Structure(lo, hi, _paint_inside(tumour, _ID[name], _ID["kidney_tumor"],
                                                               float(rng.uniform(30, 60)))))
    return structures, 20.0


# --------------------------------------------------------------------------------------------
# Public API


def _grid(rng: np.random.Generator, spec: PhantomSpec, center_z: float) -> _Grid:
    orientation = spec.orientation or str(rng.choice(COMMON_ORIENTATIONS))
    directions = _axis_directions(orientation)
    slice_axis = int(np.argmax(np.abs(directions[2])))
    fov = np.asarray(spec.fov_mm, float)
    if spec.spacing is not None:
        spacing = np.asarray(spec.spacing, float)
    elif spec.shape is not None:
        spacing = fov / np.asarray(spec.shape, float) * rng.uniform(0.9, 1.1)
    else:
        in_plane = rng.uniform(0.6, 1.0)
        spacing = np.full(3, in_plane)
        spacing[slice_axis] = rng.uniform(1.5, 5.0)
    if spec.shape is not None:
        shape = tuple(int(n) for n in spec.shape)
    else:
        shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing, strict=True))
    angle = rng.uniform(-spec.oblique_degrees, spec.oblique_degrees) if spec.oblique_degrees > 0 else 0.0
    linear = _rotation_z(angle) @ directions * spacing[None, :]
    world_center = np.array([rng.uniform(-10, 10), rng.uniform(-15, 10), center_z + rng.uniform(-15, 15)])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = world_center - linear @ ((np.asarray(shape, float) - 1) / 2)
    return _Grid(shape, affine)  # type: ignore[arg-type]


# Unenhanced CT: parenchyma and vessels near their plain values (kidneys ~30 HU, not the corticomedullary
# 165/105 HU the phantoms are drawn with), so the model meets organs it must find by shape and position.
_NONCONTRAST_HU: dict[str, float] = {
    "liver": 55.0, "spleen": 45.0, "kidney_right": 30.0, "kidney_left": 30.0, "pancreas": 38.0, "aorta": 42.0,
    "inferior_vena_cava": 40.0, "liver_tumor": 35.0, "pancreas_tumor": 32.0, "kidney_tumor": 28.0,
}


def _render_noncontrast(hu: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """In place: each enhancing structure moves to its unenhanced HU, keeping 40 % of its texture."""
    for name, target in _NONCONTRAST_HU.items():
        mask = label == _ID[name]
        if mask.any():
            values = hu[mask]
            hu[mask] = (values - values.mean()) * np.float32(0.4) + np.float32(target + rng.normal(0.0, 4.0))


def generate_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> Phantom:
    """One random abdominal CT case: int16 HU image, uint8 label (PHANTOM_LABELS) and affine.

    The patient depends on ``seed`` only; ``spec`` sets the sampling grid (drawn from the seed
    where left as ``None``).
    """
    anatomy_seq, grid_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
    structures, center_z = _anatomy(np.random.default_rng(anatomy_seq))
    grid_rng = np.random.default_rng(grid_seq)
    grid = _grid(grid_rng, spec, center_z)
    canvas = _Canvas(np.empty(grid.shape, np.float32), np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, np.uint8))
    for structure in structures:
        _rasterise(grid, canvas, structure)
    del canvas.tissue
    if spec.noncontrast_prob > 0:  # its own stream: cases without it are the same as before
        phase_rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        if phase_rng.random() < spec.noncontrast_prob:
            _render_noncontrast(canvas.hu, canvas.label, phase_rng)
    sigma = [grid_rng.uniform(0.5, 0.9) for _ in range(3)]
    hu = ndimage.gaussian_filter(canvas.hu, sigma=sigma, truncate=3.0, output=np.float32, mode="nearest")
    del canvas.hu
    noise_rng = np.random.default_rng(noise_seq)
    image = np.empty(grid.shape, np.int16)
    for box in _all_boxes(grid.shape):
        chunk = hu[box]
        if spec.noise_hu > 0:
            chunk += noise_rng.standard_normal(chunk.shape, dtype=np.float32) * np.float32(spec.noise_hu)
        np.clip(chunk, _HU_MIN, _HU_MAX, out=chunk)
        image[box] = np.rint(chunk)
    return Phantom(image=image, label=canvas.label, affine=grid.affine.copy())


def _all_boxes(shape: tuple[int, int, int]) -> Iterator[tuple[slice, slice, slice]]:
    step = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    for i0 in range(0, shape[0], step):
        yield slice(i0, min(i0 + step, shape[0])), slice(0, shape[1]), slice(0, shape[2])


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset written with ``seed``."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def write_phantom_dataset(out_dir: Path, cases: int, seed: int, spec: PhantomSpec = PhantomSpec(), *,
                          on_case: Callable[[int, Path], None] | None = None) -> Path:
    """Write ``cases`` phantoms as an MSD-style dataset under ``out_dir`` and return ``out_dir``.

    Case i is ``generate_phantom(case_seed(seed, i), spec)`` saved as
    ``imagesTr/phantom_{seed}_{i:03d}.nii.gz`` (int16) and ``labelsTr/`` (uint8, same name).
    ``on_case(i, image_path)`` is called after each case is written.
    """
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for index in range(cases):
        phantom = generate_phantom(case_seed(seed, index), spec)
        name = f"phantom_{seed}_{index:03d}.nii.gz"
        _save_nifti(phantom.image, phantom.affine, out_dir / "imagesTr" / name)
        _save_nifti(phantom.label, phantom.affine, out_dir / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        logger.debug("wrote phantom case %d to %s", index, out_dir / "imagesTr" / name)
        if on_case is not None:
            on_case(index, out_dir / "imagesTr" / name)
    dataset = {
        "name": DATASET_NAME,
        "description": "Procedural abdominal CT phantoms (latentseg); labels are exact by construction.",
        "reference": "latentseg training.synthetic.phantoms",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(value): name for value, name in PHANTOM_LABELS}},
        "numTraining": cases,
        "numTest": 0,
        "training": training,
        "test": [],
        "seed": seed,
    }
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return out_dir
