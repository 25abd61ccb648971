"""Weights: checkpoint files (checkpoint), `--resume auto` (resume), the model specification
a checkpoint records (modelspec), pretrained starts (pretrained), the one way from a
checkpoint file to its model (loading), safetensors files with the spec (portable), and
export.py's ONNX and torch.export files (export)."""
