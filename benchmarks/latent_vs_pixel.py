"""Latent vs pixel space: the same U-Net design denoising at 16² (latent, f=8) and 128² (pixels).

Both networks are the demo bundle's denoiser design (MONAI ``DiffusionModelUNet`` with the
bundle's channels, res blocks, attention levels and target embedding); only the input
differs: latent (z_t ‖ z_image) = 4 + the bundle's image-conditioning channels at 16×16 (4, or
4 + 64 with ``denoiser.image_pixels``, 4 + 64·(1 + 2k) with ``context_slices`` k), pixel (mask_t ‖ image) = 2·1 channels at 128×128. Forward time per sample per step, in one run, at the same batch sizes.

    python -m benchmarks.latent_vs_pixel [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Table, benchmark_bundle, load_average, publish, set_threads
from model.bundle.manifest import read_manifest
from model.bundle.config import ModelConfig
from model.diffusion.process import VarType
from model.nets.unet import LatentDenoiser
from model.targets.vocabulary import default_vocabulary


def build(config: ModelConfig, channels: int, condition: int) -> LatentDenoiser:
    multiplier = 2 if config.diffusion.var_type is VarType.LEARNED_RANGE else 1
    net = LatentDenoiser(config.denoiser, latent_channels=channels, condition_channels=condition,
                         num_target_ids=default_vocabulary().max_id + 1, out_multiplier=multiplier)
    return net.eval().requires_grad_(False)


def inputs(channels: tuple[int, int], size: int, batch: int) -> tuple[torch.Tensor, ...]:
    """(z_t, t, conditioning, target ids) for ``channels`` = (z_t channels, conditioning channels)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, channels[0], size, size, generator=g), torch.full((batch,), 500),
            torch.randn(batch, channels[1], size, size, generator=g), torch.full((batch,), 5))


@torch.inference_mode()
def per_sample_ms(net: LatentDenoiser, channels: tuple[int, int], size: int, batch: int, repeats: int) -> float:
    x = inputs(channels, size, batch)
    net(*x)  # warm-up (oneDNN primitives)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(*x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def gflop_per_sample(net: LatentDenoiser, channels: tuple[int, int], size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(*inputs(channels, size, 2))
    return counter.get_total_flops() / 2 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    bundle_path, _ = benchmark_bundle()
    config = ModelConfig.from_dict(read_manifest(bundle_path).config)
    c_z, h_z, _ = config.latent_shape
    pixel_size = config.preprocess.patch_size[0]
    factor = pixel_size // h_z
    lat_ch, pix_ch = (c_z, config.image_condition_channels), (1, 1)
    latent, pixel = build(config, *lat_ch), build(config, *pix_ch)
    flops = {"latent": gflop_per_sample(latent, lat_ch, h_z), "pixel": gflop_per_sample(pixel, pix_ch, pixel_size)}
    rows, data = [], {"factor": factor, "gflop": flops, "ms": {}}
    for batch in (1, 4, 16):
        lat = per_sample_ms(latent, lat_ch, h_z, batch, args.repeats)
        pix = per_sample_ms(pixel, pix_ch, pixel_size, batch, args.repeats)
        data["ms"][batch] = {"latent": lat, "pixel": pix, "ratio": pix / lat}
        rows.append([batch, f"{pix:.1f}", f"{lat:.2f}", f"**{pix / lat:.0f}×**"])
    best_latent = min(per_sample_ms(latent, lat_ch, h_z, 256, args.repeats), *(v["latent"] for v in data["ms"].values()))
    best_pixel = min(v["pixel"] for v in data["ms"].values())
    data["best"] = {"latent": best_latent, "pixel": best_pixel, "ratio": best_pixel / best_latent}
    rows.append(["best of each (latent at batch up to 256)", f"{best_pixel:.1f}", f"{best_latent:.2f}",
                 f"**{best_pixel / best_latent:.0f}×**"])
    table = Table(
        f"Latent ({c_z}×{h_z}², conditioning {lat_ch[1]}×{h_z}²) vs pixel (1×{pixel_size}²) space, same U-Net design, f={factor}: forward ms per sample per step",
        ["batch", "pixel ms", "latent ms", "pixel / latent"],
        rows,
        [f"U-Net channels {list(config.denoiser.channels)}, {config.denoiser.num_res_blocks} res block(s), attention at "
         f"levels {list(config.denoiser.attention_levels)}; {sum(p.numel() for p in latent.parameters()) / 1e6:.2f}M params "
         f"(latent), {sum(p.numel() for p in pixel.parameters()) / 1e6:.2f}M (pixel: only the first and last conv differ)",
         f"FLOPs per sample per step: pixel {flops['pixel']:.2f} GFLOP, latent {flops['latent']:.3f} GFLOP "
         f"(ratio {flops['pixel'] / flops['latent']:.0f}×)",
         f"{threads} threads, median of {args.repeats} after a warm-up"],
    )
    publish("latent_vs_pixel", [table], data, load_before)


if __name__ == "__main__":
    main()
