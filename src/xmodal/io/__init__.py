"""Infrastructure below every layer: atomic files, checkpoints, provenance, the restricted unpickler."""
