"""Scoring bundles on labelled data: Dice/HD95/calibration reports, ceilings, sampling sweeps, the review flag and the served marks."""
