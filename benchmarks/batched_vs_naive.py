"""Batched ensemble sampling vs a naive per-sample loop, on real windows of the standard phantom.

25 consecutive axial windows (with body) of the standard case × liver, spleen × ensemble 5
= 250 samples, 10 steps, three ways:

- naive loop: for every (window, target, member) encode the window, run the 10 steps and
  decode, one sample at a time (what a first implementation does);
- ``sample_window_probabilities`` with ``max_batch=1``: one sample at a time through the
  denoiser and decoder, but each window's image latent computed once;
- ``sample_window_probabilities`` with one batch of 250 (what the pipeline does).

Same per-sample seeds in all three, so the outputs must agree.

    python -m benchmarks.batched_vs_naive [--windows 25] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import Table, benchmark_bundle, load_average, publish, set_threads, standard_phantom
from model.bundle.loaded import load_bundle
from model.diffusion.samplers import sample
from model.inference.ensemble import WindowKey, sample_seed, sample_window_probabilities
from model.inference.pipeline import body_box
from model.inference.preprocessing import axial_slices, body_mask, load_nifti, scale_intensity, to_model_grid, with_context

TARGETS = ("liver", "spleen")


def windows(bundle, count: int) -> tuple[torch.Tensor, list[WindowKey]]:
    pre = bundle.config.preprocess
    grid = to_model_grid(load_nifti(standard_phantom()), pre)
    body = body_mask(grid.hu, pre)
    rows, cols = body_box(body, pre.patch_size)
    h, w = pre.patch_size
    rows, cols = slice(rows.start, rows.start + h), slice(cols.start, cols.start + w)
    with_body = torch.nonzero(body[rows, cols].flatten(0, 1).any(0)).flatten()
    middle = int(with_body[len(with_body) // 2])
    z = slice(max(0, middle - count // 2), max(0, middle - count // 2) + count)
    slices = with_context(axial_slices(scale_intensity(grid.hu[rows, cols], pre)), bundle.config.denoiser.context_slices)
    images = slices[z]
    keys = [WindowKey(z.start + i, rows.start, cols.start) for i in range(images.shape[0])]
    return images, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=25)
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    load_before = load_average()
    bundle_path, trained = benchmark_bundle()
    bundle = load_bundle(bundle_path, device="cpu")
    images, keys = windows(bundle, args.windows)
    ids = [bundle.vocabulary.get(t).id for t in TARGETS]
    process = bundle.process(args.steps)
    samples = len(keys) * len(ids) * args.ensemble

    def run(max_batch: int) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = sample_window_probabilities(bundle, process, images, keys, ids, ensemble=args.ensemble, seed=0,
                                          sampler=bundle.config.sampling.sampler, max_batch=max_batch)
        return time.perf_counter() - start, out

    @torch.no_grad()
    def naive_loop() -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = torch.empty(len(keys), len(ids), args.ensemble, *images.shape[-2:])
        for w, key in enumerate(keys):
            for k, target_id in enumerate(ids):
                for m in range(args.ensemble):
                    z_image = bundle.encode_image(images[w : w + 1])
                    generator = torch.Generator().manual_seed(sample_seed(0, key, target_id, m))
                    z0 = sample(process, bundle.denoiser, (1, *bundle.config.latent_shape), generator=[generator],
                                model_kwargs={"z_image": z_image, "target_ids": torch.tensor([target_id])},
                                sampler=bundle.config.sampling.sampler, eta=bundle.config.sampling.eta)
                    out[w, k, m] = torch.sigmoid(bundle.decode_mask(z0))[0, 0]
        return time.perf_counter() - start, out

    run(samples)  # warm-up
    batched = [run(samples) for _ in range(args.repeats)]
    one_by_one = [run(1) for _ in range(args.repeats)]
    naive = [naive_loop() for _ in range(args.repeats)]
    t_batched, t_one, t_naive = (statistics.median(t for t, _ in runs) for runs in (batched, one_by_one, naive))
    difference = max(float((batched[0][1] - other[0][1]).abs().max()) for other in (one_by_one, naive))
    per_step = lambda t: f"{1000 * t / samples / args.steps:.2f}"  # noqa: E731
    table = Table(
        f"Batched vs naive per-sample loop: {len(keys)} windows × {len(ids)} targets × ensemble {args.ensemble} "
        f"= {samples} samples, {args.steps} steps",
        ["mode", "seconds", "ms per sample per step", "speed-up vs naive"],
        [
            ["naive loop: encode, 10 steps, decode, one sample at a time", f"{t_naive:.2f}", per_step(t_naive), "1×"],
            ["`sample_window_probabilities`, max_batch=1 (image latent once per window)", f"{t_one:.2f}",
             per_step(t_one), f"{t_naive / t_one:.1f}×"],
            [f"`sample_window_probabilities`, one batch of {samples} (the pipeline)", f"{t_batched:.2f}",
             per_step(t_batched), f"**{t_naive / t_batched:.1f}×**"],
        ],
        [f"same seeds: max |batched − other| probability = {difference:.1e} (float32 rounding differs with batch size)",
         "every row includes encoding, sampling and decoding",
         f"{threads} threads, median of {args.repeats} after a warm-up"
         + ("" if trained else "; random weights with the demo configuration")],
    )
    publish("batched_vs_naive", [table], {"batched_s": t_batched, "one_by_one_s": t_one, "naive_s": t_naive,
                                         "speedup": t_naive / t_batched, "samples": samples,
                                         "max_abs_difference": difference}, load_before)


if __name__ == "__main__":
    main()
