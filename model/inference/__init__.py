"""Inference: preprocessing, ensemble sampling, the sliding-window pipeline and per-target statistics."""
