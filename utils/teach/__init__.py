"""The given maps of map teaching and their loaders: attention_maps for --attention-maps (one
loader for single-label and multi-task splits; `python -m utils.teach.attention_maps DIR`
writes the shapes masks as such a folder), layouts for where each kind's maps lie in the
folder, boxes for --attention-boxes (a CSV or Pascal VOC files; `python -m utils.teach.boxes
FILE` writes the shapes masks' boxes), map_store for where the page saves maps. The engine
adds the teaching itself (utils.train.teaching); the losses are utils.objectives.map_loss and
task_map_loss."""
