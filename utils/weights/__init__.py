"""Weights: checkpoint files (checkpoint), `--resume auto` (resume), the model specification
a checkpoint records (modelspec), pretrained starts (pretrained), and the one way from a
checkpoint file to its model (loading)."""
