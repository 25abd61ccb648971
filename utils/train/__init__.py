"""Training: the scripts' main and the loop (engine), the run's set-up (setup) and where its
model computes (placement), its state and the checkpoints it is saved to (state,
checkpoints), map teaching added by --attention-maps (teaching), a script's TrainingScript (script),
the training options (options), log.txt (logger), TensorBoard (tensorboard_log) and the
attention images (attention_images)."""
