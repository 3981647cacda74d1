"""Augmentation of real training patches: MONAI spatial/intensity transforms and contrast-phase re-enhancement."""
