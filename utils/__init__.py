"""The library behind the scripts, one room per concept:

- data/: data sets, transforms, loaders, the fast data path, image files;
- weights/: checkpoint files, the model spec, pretrained starts, the one loader from a
  checkpoint to a model, and the files a model leaves in (safetensors, ONNX, .pt2);
- objectives/: what a run optimises and reports (losses, meters), each registered by name;
- train/: the engine shared by the training scripts, their options, log and TensorBoard;
- teach/: teaching the attention map from given maps (--attention-maps);
- explain/: explain.py's maps (ABN, CAM, Grad-CAM), their measures, multi-task explanation;
- serve/: the attention editor (explain.py --serve): its state, and its page.

At the top: errors (AbnError), cli (the scripts' command line), distributed, signals,
progress and visualize, which every room may use; and api, the Python API (docs/api.md),
which uses the rooms. Nothing here imports a script.
"""
