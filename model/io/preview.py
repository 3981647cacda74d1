"""A picture of a segmentation: a PNG mosaic of axial slices with contours, variance and a legend.

Each tile is one axial slice of the CT (abdominal window, W400/L40 by default) shown in the
radiological convention (patient's right on the viewer's left, anterior at the top) with the
physical pixel aspect. On it:

- the ensemble variance as a semi-transparent "hot" overlay: per pixel the largest variance
  over the targets, on a fixed scale ``0 .. variance_max`` (0.25 is the largest variance a
  probability can have, so tiles of different jobs compare directly); zero variance leaves the
  CT untouched;
- each target's mean mask contour at 0.5, 2 px wide, in the target's colour
  (:func:`target_colour`; the colours have no red-only hue, so they never coincide with the
  heat overlay, and contours are drawn last and without anti-aliasing, so a colour in the
  picture belongs to exactly one target).

Slices are spread evenly over the range of slices where any target's mean reaches 0.5 (the
whole volume when none does). Below the mosaic, a legend lists every target with its colour,
plus the variance colour bar.

pillow, numpy and nibabel (for reorientation) only: no torch, no matplotlib, so the API
process can draw pictures too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageDraw, ImageFont

from model.targets.vocabulary import Target

if TYPE_CHECKING:
    from model.inference.pipeline import Segmentation
    from model.inference.preprocessing import Volume

__all__ = [
    "Preview",
    "PreviewOptions",
    "TARGET_COLOURS",
    "render_preview",
    "render_preview_files",
    "target_colour",
    "write_preview",
]

# Distinct, saturated, none of them grey or on the black-red-yellow-white heat ramp.
TARGET_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (0, 128, 255),
    (128, 0, 255),
    (0, 255, 128),
    (255, 0, 128),
    (128, 255, 0),
    (0, 0, 255),
    (255, 128, 255),
    (128, 128, 255),
    (0, 160, 120),
)
BACKGROUND = (0, 0, 0)
LEGEND_BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)


def target_colour(index: int) -> tuple[int, int, int]:
    """The colour of the ``index``-th target of a result (cycles after 12 targets)."""
    return TARGET_COLOURS[index % len(TARGET_COLOURS)]


@dataclass(frozen=True)
class PreviewOptions:
    max_slices: int = 12
    columns: int = 4
    tile_size: int = 256  # pixels along the longer physical side of a slice
    window: tuple[float, float] = (-160.0, 240.0)  # HU shown from black to white
    variance_max: float = 0.25
    heat_alpha: float = 0.6
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.max_slices < 1 or self.columns < 1 or self.tile_size < 16:
            raise ValueError("max_slices and columns must be >= 1 and tile_size >= 16")
        if not self.window[0] < self.window[1]:
            raise ValueError(f"window must be (low, high) with low < high, got {self.window}")
        if self.variance_max <= 0 or not 0 <= self.heat_alpha <= 1:
            raise ValueError("variance_max must be > 0 and heat_alpha in [0, 1]")


@dataclass(frozen=True)
class Preview:
    """The rendered picture and where its parts are: boxes are (left, top, right, bottom)."""

    image: Image.Image
    mosaic_box: tuple[int, int, int, int]
    legend_box: tuple[int, int, int, int]
    slices: tuple[int, ...]  # indices along the RAS S axis (after reorientation to RAS)
    tiles: tuple[tuple[int, int, int, int], ...]  # one box per slice, same order
    colours: Mapping[str, tuple[int, int, int]]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pillow built without FreeType
        return ImageFont.load_default()


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    return apply_orientation(array, transform)


def _ras_spacing(affine: np.ndarray) -> np.ndarray:
    ornt = io_orientation(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing = np.empty(3)
    for axis, (out_axis, _) in enumerate(ornt):
        spacing[int(out_axis)] = zooms[axis]
    return spacing


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """(x, y) RAS slice -> (rows, cols) picture: anterior up, patient's right on the left."""
    return np.ascontiguousarray(slice_xy.T[::-1, ::-1])


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (or on the border), widened to 2 px."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~interior
    wide = edge.copy()
    wide[1:, :] |= edge[:-1, :]
    wide[:, 1:] |= edge[:, :-1]
    return wide & mask


def _heat(v: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white ramp for v in [0, 1] -> (H, W, 3) float in [0, 255]."""
    return 255.0 * np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)


def _pick_slices(masks: Sequence[np.ndarray], depth: int, limit: int) -> tuple[int, ...]:
    present = np.zeros(depth, dtype=bool)
    for mask in masks:
        present |= mask.any(axis=(0, 1))
    hits = np.flatnonzero(present)
    lo, hi = (int(hits[0]), int(hits[-1])) if hits.size else (0, depth - 1)
    count = min(limit, hi - lo + 1)
    return tuple(sorted({int(round(v)) for v in np.linspace(lo, hi, count)}))


def render_preview(
    hu: np.ndarray,
    affine: np.ndarray,
    targets: Sequence[Target],
    mean: Mapping[str, np.ndarray],
    variance: Mapping[str, np.ndarray],
    options: PreviewOptions = PreviewOptions(),
) -> Preview:
    """Draw the mosaic for a CT ``hu`` (I, J, K) with voxel->RAS ``affine`` and per-target maps."""
    if hu.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {hu.shape}")
    for target in targets:
        for kind, maps in (("mean", mean), ("variance", variance)):
            if maps[target.name].shape != hu.shape:
                raise ValueError(f"{target.name} {kind} has shape {maps[target.name].shape}, the CT {hu.shape}")
    ct = _to_ras(hu, affine)
    means = [_to_ras(mean[t.name], affine) for t in targets]
    variances = [_to_ras(variance[t.name], affine) for t in targets]
    slices = _pick_slices([m >= options.threshold for m in means], ct.shape[2], options.max_slices)
    planes = {
        z: _Planes(ct[:, :, z], [m[:, :, z] for m in means], [v[:, :, z] for v in variances]) for z in slices
    }
    return _draw(planes, ct.shape, affine, targets, options)


@dataclass(frozen=True)
class _Planes:
    """One axial slice (x, y in RAS) of the CT and of every target's mean and variance."""

    ct: np.ndarray
    means: list[np.ndarray]
    variances: list[np.ndarray]


def render_preview_files(
    ct_path: Path,
    results_dir: Path,
    targets: Sequence[Target],
    options: PreviewOptions = PreviewOptions(),
) -> Preview:
    """The same picture from files: the input NIfTI and a results folder (``labels.nii.gz``,
    ``{target}_mean.nii.gz``, ``{target}_variance.nii.gz``).

    Lean on memory: slices are chosen from the uint8 label map, then each file is read in turn
    and only the chosen slices are kept, so the peak is one full-resolution volume (an API
    process can afford this; it cannot afford every map of every target at once). A voxel
    "reaches 0.5" here when the label map gives it to a target (mean > 0.5 and the largest).
    """
    import nibabel as nib

    ct_image = nib.load(str(ct_path))
    affine = np.asarray(ct_image.affine, dtype=np.float64)
    shape = tuple(int(n) for n in ct_image.shape[:3])
    labels = _to_ras(np.asarray(nib.load(str(Path(results_dir) / "labels.nii.gz")).dataobj).reshape(shape), affine)
    ras_shape = labels.shape
    slices = _pick_slices([labels == t.id for t in targets], ras_shape[2], options.max_slices)
    del labels

    def planes_of(path: Path) -> dict[int, np.ndarray]:
        volume = _to_ras(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32).reshape(shape), affine)
        return {z: np.array(volume[:, :, z]) for z in slices}

    ct = planes_of(Path(ct_path))
    means = [planes_of(Path(results_dir) / f"{t.name}_mean.nii.gz") for t in targets]
    variances = [planes_of(Path(results_dir) / f"{t.name}_variance.nii.gz") for t in targets]
    planes = {z: _Planes(ct[z], [m[z] for m in means], [v[z] for v in variances]) for z in slices}
    return _draw(planes, ras_shape, affine, targets, options)


def _draw(
    planes: Mapping[int, _Planes],
    ras_shape: tuple[int, ...],
    affine: np.ndarray,
    targets: Sequence[Target],
    options: PreviewOptions,
) -> Preview:
    slices = tuple(planes)
    spacing = _ras_spacing(affine)
    nx, ny, nz = ras_shape
    width_mm, height_mm = nx * spacing[0], ny * spacing[1]
    scale = options.tile_size / max(width_mm, height_mm)
    tile_w, tile_h = max(1, round(width_mm * scale)), max(1, round(height_mm * scale))
    columns = min(options.columns, len(slices))
    rows = -(-len(slices) // columns)
    gap = 4
    mosaic_w = columns * tile_w + (columns + 1) * gap
    mosaic_h = rows * tile_h + (rows + 1) * gap

    font = _font(14)
    small = _font(11)
    colours = {t.name: target_colour(i) for i, t in enumerate(targets)}
    line_h = 20
    legend_lines = len(targets) + 2  # title line, targets, variance bar
    legend_h = gap + legend_lines * line_h + gap
    picture = Image.new("RGB", (max(mosaic_w, 320), mosaic_h + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(picture)

    lo, hi = options.window
    s_axis_mm = _slice_positions(affine, nz)
    tiles: list[tuple[int, int, int, int]] = []
    for n, z in enumerate(slices):
        size = (tile_w, tile_h)
        plane = planes[z]
        gray = np.clip((_resize(_display(plane.ct), size, Image.Resampling.BILINEAR) - lo) / (hi - lo), 0, 1)
        rgb = np.repeat((gray * 255.0)[..., None], 3, axis=-1)
        if plane.variances:
            var = np.max([_resize(_display(v), size, Image.Resampling.BILINEAR) for v in plane.variances], axis=0)
            level = np.clip(var / options.variance_max, 0.0, 1.0)
            alpha = (options.heat_alpha * level)[..., None]
            rgb = (1 - alpha) * rgb + alpha * _heat(level)
        tile = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        for target, m in zip(targets, plane.means, strict=True):
            mask = _resize(_display(m), size, Image.Resampling.BILINEAR) >= options.threshold
            tile[_contour(mask)] = colours[target.name]
        left = gap + (n % columns) * (tile_w + gap)
        top = gap + (n // columns) * (tile_h + gap)
        picture.paste(Image.fromarray(tile, mode="RGB"), (left, top))
        tiles.append((left, top, left + tile_w, top + tile_h))
        draw.text((left + 3, top + 2), f"S {s_axis_mm[z]:+.1f} mm", fill=TEXT, font=small)

    legend_top = mosaic_h
    draw.rectangle((0, legend_top, picture.width - 1, picture.height - 1), fill=LEGEND_BACKGROUND)
    y = legend_top + gap
    draw.text((gap + 2, y), "mean mask contour (0.5); ensemble variance as heat", fill=TEXT, font=font)
    for target in targets:
        y += line_h
        draw.rectangle((gap + 2, y + 2, gap + 16, y + 16), fill=colours[target.name])
        draw.text((gap + 24, y), f"{target.display} ({target.name})", fill=TEXT, font=font)
    y += line_h
    bar_left, bar_w = gap + 2, 160
    ramp = _heat(np.linspace(0.0, 1.0, bar_w))[None].repeat(12, axis=0)
    picture.paste(Image.fromarray(np.rint(ramp).astype(np.uint8), mode="RGB"), (bar_left, y + 3))
    draw.text(
        (bar_left + bar_w + 8, y), f"variance 0 .. {options.variance_max:g}", fill=TEXT, font=font
    )
    return Preview(
        image=picture,
        mosaic_box=(0, 0, picture.width, mosaic_h),
        legend_box=(0, legend_top, picture.width, picture.height),
        slices=slices,
        tiles=tuple(tiles),
        colours=colours,
    )


def _slice_positions(affine: np.ndarray, depth: int) -> np.ndarray:
    """The S coordinate (mm) of the centre of each slice along the RAS S axis after reorientation."""
    ornt = io_orientation(affine)
    source_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    flip = ornt[source_axis, 1] < 0
    index = np.arange(depth)
    voxel_index = (depth - 1 - index) if flip else index
    voxel = np.zeros((depth, 4))
    voxel[:, source_axis] = voxel_index
    voxel[:, 3] = 1.0
    # The slice's S coordinate at the in-plane origin; good enough for a caption.
    return (voxel @ affine.T)[:, 2]


def write_preview(
    path: str | Path, volume: Volume, result: Segmentation, options: PreviewOptions = PreviewOptions()
) -> Path:
    """Render ``result`` over ``volume`` (same grid) and save it as a PNG at ``path``."""
    preview = render_preview(volume.data, volume.affine, result.targets, result.mean, result.variance, options)
    path = Path(path)
    preview.image.save(path, format="PNG", optimize=True)
    return path
