"""Teaching the map (--attention-maps): the given maps and their loaders (attention_maps;
`python -m utils.teach.attention_maps DIR` writes the shapes masks as such a folder; task_maps
for celeba.py's maps per attribute), and the options and Task of a fine-tuning run
(fine_tune). The losses are utils.objectives.attention_map and utils.objectives.task_maps."""
