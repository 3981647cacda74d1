"""Synthetic training data with exact labels: procedural phantoms and SynthSeg-style phantoms from real label maps."""
