"""Small helpers with no knowledge of the model or the data: atomic files, rendering frames, mask
morphology and wall time by phase."""
