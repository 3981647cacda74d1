"""Cost of the DICOM uncertainty objects (model.io.dicom_seg): size and write time of segmentation.dcm,
probability.dcm (FRACTIONAL SEG) and {target}_variance.dcm (16-bit RLE Parametric Map) for a synthetic
result on a CT-sized grid. Prints a table; nothing is asserted.

    python benchmarks/dicom_uncertainty.py [--slices 100] [--targets liver,spleen]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--targets", default="liver")
    args = parser.parse_args()

    from model.io.dicom_seg import derive_ct_series, write_dicom_seg
    from model.inference.pipeline import Segmentation
    from model.inference.preprocessing import Volume
    from model.targets.vocabulary import default_vocabulary

    shape = (args.size, args.size, args.slices)
    volume = Volume(data=np.zeros(shape, np.float32), affine=np.diag([0.8, 0.8, 3.0, 1.0]))
    sources = derive_ct_series(volume)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    targets = default_vocabulary().resolve(args.targets)
    means, variances = {}, {}
    for n, target in enumerate(targets):
        distance = np.sqrt(((grid - np.array([0.3 * n, 0, 0])[:, None, None, None]) ** 2).sum(axis=0))
        means[target.name] = np.clip(1.2 - 1.5 * distance, 0, 1).astype(np.float32)
        variances[target.name] = (means[target.name] * (1 - means[target.name]) * 0.2).astype(np.float32)
    result = Segmentation(targets=targets, mean=means, variance=variances, affine=volume.affine)
    with tempfile.TemporaryDirectory() as scratch:
        for uncertainty in (False, True):
            out = Path(scratch) / str(uncertainty)
            start = time.perf_counter()
            written = write_dicom_seg(result, out, volume=volume, source_images=sources, bundle_name="bench",
                                      bundle_version="0", uncertainty=uncertainty)
            seconds = time.perf_counter() - start
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in written)
            print(f"{shape} {len(targets)} target(s), uncertainty={uncertainty}: {seconds:.1f} s; {sizes}")


if __name__ == "__main__":
    main()
