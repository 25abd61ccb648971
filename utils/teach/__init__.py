"""The given maps of map teaching (--attention-maps) and their loaders: attention_maps
(`python -m utils.teach.attention_maps DIR` writes the shapes masks as such a folder), and
task_maps for celeba.py's maps per attribute. The engine adds the teaching itself
(utils.train.teaching); the losses are utils.objectives.attention_map and task_maps."""
