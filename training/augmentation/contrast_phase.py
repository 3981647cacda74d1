"""Contrast-phase augmentation: re-enhance a real scan as if it had been taken in another phase.

Two real patients rarely share a contrast phase (here: one unenhanced torso, one arterial slab), and
a hospital's scans come in every phase. A model that learnt "the aorta is the bright tube" from an
arterial scan misses an unenhanced aorta, and one that learnt on an unenhanced scan takes an
enhanced kidney for something else. Global intensity augmentation cannot fix that: enhancement is
per structure. This transform keeps the scan's own texture and moves each labelled enhancing
structure (vessels, parenchymal organs) to the HU it would have in a randomly drawn phase:

    voxel_HU + (phase_HU(structure) - median_HU(structure in this case))

The per-structure targets come from :data:`PHASES` (typical portal-venous/arterial/unenhanced/delayed
values from the CT literature); one quantile ``u`` is shared by all structures of a draw (a strong
bolus enhances everything), with a little per-structure jitter. Structures the case does not label
(or labels with too few voxels) are left alone, as are the hollow organs and the gallbladder, whose
content (air, fluid, bile) does not enhance. The offset field is smoothed by a small Gaussian so that
the edges of a 3 mm label grid do not become artificial steps.

The case's structure labels come from its full label map (the ``bits`` of a prepared case, which
keep every vocabulary structure the dataset annotates, trained or not).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter

from model.targets.vocabulary import Vocabulary

# HU range (low, high) of each enhancing structure per phase; the draw's quantile u picks within it.
PHASES: Mapping[str, Mapping[str, tuple[float, float]]] = {
    "unenhanced": {
        "aorta": (35, 55), "inferior_vena_cava": (30, 50), "portal_vein_and_splenic_vein": (35, 50),
        "liver": (50, 70), "spleen": (40, 55), "kidney_left": (25, 40), "kidney_right": (25, 40),
        "pancreas": (35, 50), "adrenal_gland_left": (10, 30), "adrenal_gland_right": (10, 30),
    },
    "arterial": {
        "aorta": (200, 380), "inferior_vena_cava": (50, 110), "portal_vein_and_splenic_vein": (80, 170),
        "liver": (60, 95), "spleen": (90, 150), "kidney_left": (130, 230), "kidney_right": (130, 230),
        "pancreas": (90, 140), "adrenal_gland_left": (50, 90), "adrenal_gland_right": (50, 90),
    },
    "portal_venous": {
        "aorta": (130, 200), "inferior_vena_cava": (100, 170), "portal_vein_and_splenic_vein": (140, 210),
        "liver": (95, 135), "spleen": (105, 140), "kidney_left": (150, 220), "kidney_right": (150, 220),
        "pancreas": (80, 115), "adrenal_gland_left": (50, 80), "adrenal_gland_right": (50, 80),
    },
    "delayed": {
        "aorta": (90, 135), "inferior_vena_cava": (85, 130), "portal_vein_and_splenic_vein": (90, 135),
        "liver": (75, 100), "spleen": (80, 110), "kidney_left": (120, 190), "kidney_right": (120, 190),
        "pancreas": (60, 90), "adrenal_gland_left": (40, 70), "adrenal_gland_right": (40, 70),
    },
}
PHASE_WEIGHTS: Mapping[str, float] = {"unenhanced": 0.25, "arterial": 0.25, "portal_venous": 0.35, "delayed": 0.15}
MIN_VOXELS = 30  # a structure with fewer labelled voxels in the case gives no reliable median


class ContrastPhaseAugmenter:
    """``augment(image (C,H,W), bits (C,H,W), medians, seed) -> image``, images scaled to [0, 1] from the HU
    window [hu_min, hu_max]; ``medians`` is :meth:`case_medians` of the patch's case (computed once per case)."""

    def __init__(self, vocabulary: Vocabulary, hu_min: float, hu_max: float, prob: float, smooth_sigma: float = 0.7) -> None:
        if hu_max <= hu_min:
            raise ValueError(f"HU window [{hu_min}, {hu_max}] is empty")
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.prob = float(prob)
        self.smooth_sigma = float(smooth_sigma)
        names = sorted({name for table in PHASES.values() for name in table})
        self.structures: dict[int, str] = {vocabulary.get(n).id: n for n in names}
        self.phases = tuple(PHASE_WEIGHTS)
        w = np.asarray([PHASE_WEIGHTS[p] for p in self.phases], dtype=np.float64)
        self.phase_probs = w / w.sum()

    def to_hu(self, scaled: np.ndarray | float) -> np.ndarray | float:
        return self.hu_min + np.asarray(scaled, dtype=np.float64) * (self.hu_max - self.hu_min)

    def case_medians(self, image: np.ndarray, bits: np.ndarray) -> dict[int, float]:
        """Median HU of each enhancing structure the case labels (at least :data:`MIN_VOXELS` voxels)."""
        found = int(np.bitwise_or.reduce(bits, axis=None))
        medians: dict[int, float] = {}
        for target_id in self.structures:
            if not (found >> target_id) & 1:
                continue
            inside = ((bits >> np.uint64(target_id)) & np.uint64(1)).astype(bool)
            if int(inside.sum()) >= MIN_VOXELS:
                medians[target_id] = float(self.to_hu(np.median(image[inside])))
        return medians

    def __call__(self, image: np.ndarray, bits: np.ndarray, medians: Mapping[int, float], seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if not medians or rng.random() >= self.prob:
            return image
        table = PHASES[self.phases[int(rng.choice(len(self.phases), p=self.phase_probs))]]
        u = rng.random()
        offset = np.zeros(image.shape, dtype=np.float32)
        for target_id, median in medians.items():
            lo, hi = table[self.structures[target_id]]
            q = float(np.clip(u + rng.normal(0.0, 0.1), 0.0, 1.0))
            shift = (lo + q * (hi - lo) - median) / (self.hu_max - self.hu_min)
            inside = ((bits >> np.uint64(target_id)) & np.uint64(1)).astype(bool)
            offset[inside] = shift
        if not offset.any():
            return image
        if self.smooth_sigma > 0:
            offset = gaussian_filter(offset, sigma=(0.0, self.smooth_sigma, self.smooth_sigma))
        return np.clip(image + offset, 0.0, 1.0).astype(np.float32, copy=False)
