"""Training: the engine shared by cifar.py, imagenet.py and celeba.py (engine: the loops;
setup: model, data and devices; checkpoints: what a run saves and resumes; attention_images),
a script's Task (task), the training options (options), log.txt (logger) and TensorBoard
(tensorboard_log)."""
