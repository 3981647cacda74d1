"""The preview picture (model.io.preview) on synthetic volumes with known masks and variance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.inference.pipeline import Segmentation
from model.inference.preprocessing import Volume
from model.io.preview import PreviewOptions, render_preview, target_colour, write_preview
from model.targets.vocabulary import default_vocabulary

VOCABULARY = default_vocabulary()


def phantom(affine: np.ndarray, shape: tuple[int, int, int] = (60, 40, 12)) -> tuple[Volume, dict[str, np.ndarray]]:
    """A CT box with a "liver" ball on the patient's right and a "spleen" ball on the left (RAS world)."""
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = (np.c_[ijk, np.ones(len(ijk))] @ affine.T)[:, :3].reshape(*shape, 3)
    centre = (affine @ [(shape[0] - 1) / 2, (shape[1] - 1) / 2, (shape[2] - 1) / 2, 1])[:3]
    rel = world - centre
    body = np.where((rel[..., 0] / 40) ** 2 + (rel[..., 1] / 30) ** 2 <= 1, 40.0, -1000.0).astype(np.float32)
    # RAS: +x is the patient's right, +y anterior. The liver: right and anterior; the spleen: left and posterior.
    liver = (((rel[..., 0] - 18) / 14) ** 2 + ((rel[..., 1] - 8) / 10) ** 2 + (rel[..., 2] / 10) ** 2 <= 1)
    spleen = (((rel[..., 0] + 20) / 8) ** 2 + ((rel[..., 1] + 10) / 7) ** 2 + (rel[..., 2] / 6) ** 2 <= 1)
    return Volume(data=body, affine=affine), {"liver": liver, "spleen": spleen}


def result_for(volume: Volume, masks: dict[str, np.ndarray], variance_in: str | None) -> Segmentation:
    names = ["liver", "spleen", "pancreas"]  # pancreas: nothing found
    mean = {n: masks[n].astype(np.float32) * 0.9 if n in masks else np.zeros(volume.shape, np.float32) for n in names}
    variance = {n: np.zeros(volume.shape, np.float32) for n in names}
    if variance_in is not None:
        variance[variance_in] = masks[variance_in].astype(np.float32) * 0.2
    return Segmentation(targets=VOCABULARY.resolve(names), mean=mean, variance=variance, affine=volume.affine)


def count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.all(pixels == np.asarray(colour, np.uint8), axis=-1).sum())


LPS_LIKE = np.array([[-2.0, 0, 0, 50.0], [0, -2.5, 0, 40.0], [0, 0, 4.0, -20.0], [0, 0, 0, 1]])
RAS_LIKE = np.array([[2.0, 0, 0, -50.0], [0, 2.5, 0, -40.0], [0, 0, 4.0, -20.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [LPS_LIKE, RAS_LIKE], ids=["lps", "ras"])
def test_png_has_contours_legend_and_radiological_orientation(tmp_path: Path, affine: np.ndarray) -> None:
    volume, masks = phantom(affine)
    result = result_for(volume, masks, variance_in=None)
    path = write_preview(tmp_path / "preview.png", volume, result)
    image = np.asarray(Image.open(path).convert("RGB"))
    preview = render_preview(volume.data, volume.affine, result.targets, result.mean, result.variance)
    assert image.shape[:2] == (preview.image.height, preview.image.width)

    left, top, right, bottom = preview.mosaic_box
    mosaic = image[top:bottom, left:right]
    l_left, l_top, l_right, l_bottom = preview.legend_box
    legend = image[l_top:l_bottom, l_left:l_right]
    assert l_top >= bottom and l_bottom == image.shape[0] and l_bottom - l_top >= 60
    liver, spleen, pancreas = (target_colour(i) for i in range(3))
    assert len({liver, spleen, pancreas}) == 3
    for colour in (liver, spleen, pancreas):
        assert count(legend, colour) >= 100  # a swatch per target, found or not
    assert count(mosaic, liver) > 50 and count(mosaic, spleen) > 20
    assert count(mosaic, pancreas) == 0  # nothing found, nothing drawn

    # Slices come from where something was found (the liver spans the most slices).
    liver_slices = np.flatnonzero(masks["liver"].any(axis=(0, 1)))
    assert preview.slices and len(preview.slices) <= PreviewOptions().max_slices
    depth = volume.shape[2]
    ras_slices = {depth - 1 - z for z in preview.slices} if affine[2, 2] < 0 else set(preview.slices)
    assert ras_slices <= set(range(liver_slices.min(), liver_slices.max() + 1))

    # Radiological convention: the patient's right (the liver) on the viewer's left, anterior up.
    both = 0
    for box in preview.tiles:
        tile = image[box[1] : box[3], box[0] : box[2]]
        liver_rows, liver_cols = np.nonzero(np.all(tile == np.asarray(liver, np.uint8), axis=-1))
        spleen_rows, spleen_cols = np.nonzero(np.all(tile == np.asarray(spleen, np.uint8), axis=-1))
        if liver_cols.size and spleen_cols.size:
            both += 1
            assert liver_cols.mean() < tile.shape[1] / 2 < spleen_cols.mean()
            assert liver_rows.mean() < spleen_rows.mean()
    assert both >= 1
    # physical aspect: 60 x 2 mm wide, 40 x 2.5 mm high -> 256 x 213 pixel tiles
    assert {(b[2] - b[0], b[3] - b[1]) for b in preview.tiles} == {(256, 213)}


def test_variance_heat_only_where_there_is_variance() -> None:
    volume, masks = phantom(RAS_LIKE)
    quiet = render_preview(volume.data, volume.affine, *_maps(result_for(volume, masks, variance_in=None)))
    noisy = render_preview(volume.data, volume.affine, *_maps(result_for(volume, masks, variance_in="liver")))
    target_colours = {target_colour(i) for i in range(3)}

    def warm_pixels(preview_image: Image.Image, box: tuple[int, int, int, int]) -> int:
        pixels = np.asarray(preview_image)[box[1] : box[3], box[0] : box[2]].astype(int)
        not_contour = ~np.any([np.all(pixels == c, axis=-1) for c in target_colours], axis=0)
        warm = (pixels[..., 0] > pixels[..., 2] + 20) & not_contour
        return int(warm.sum())

    assert warm_pixels(quiet.image, quiet.mosaic_box) == 0  # no variance: grey CT plus contours only
    assert warm_pixels(noisy.image, noisy.mosaic_box) > 100


def _maps(result: Segmentation) -> tuple:
    return result.targets, result.mean, result.variance


def test_nothing_found_still_renders_and_bad_input_is_refused() -> None:
    volume, _ = phantom(RAS_LIKE, shape=(30, 30, 5))
    empty = {"liver": np.zeros(volume.shape, np.float32)}
    preview = render_preview(volume.data, volume.affine, VOCABULARY.resolve("liver"), empty, empty)
    assert preview.slices == (0, 1, 2, 3, 4)  # the whole volume when no target reaches 0.5
    with pytest.raises(ValueError, match="shape"):
        render_preview(volume.data, volume.affine, VOCABULARY.resolve("liver"), {"liver": np.zeros((2, 2, 2))}, empty)
    with pytest.raises(ValueError):
        PreviewOptions(window=(100.0, -100.0))


def test_file_based_rendering_draws_the_same_picture(tmp_path: Path) -> None:
    import nibabel as nib

    from model.inference.writing import write_segmentation
    from model.io.preview import render_preview_files

    volume, masks = phantom(LPS_LIKE)
    result = result_for(volume, masks, variance_in="liver")
    write_segmentation(result, tmp_path / "results")
    nib.save(nib.Nifti1Image(volume.data, volume.affine), str(tmp_path / "input.nii"))
    from_files = render_preview_files(tmp_path / "input.nii", tmp_path / "results", result.targets)
    in_memory = render_preview(volume.data, volume.affine, result.targets, result.mean, result.variance)
    assert from_files.slices == in_memory.slices
    np.testing.assert_array_equal(np.asarray(from_files.image), np.asarray(in_memory.image))
