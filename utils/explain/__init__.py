"""Explanation (explain.py): ABN maps beside CAM and Grad-CAM (cam), their measures (measures),
the run over images (run), and the per-task maps of multi-task models (multitask)."""
