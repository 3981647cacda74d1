"""Model cards: the markdown sections of the real-CT card and the phantom-lineage card, and the measurements behind the latter."""
