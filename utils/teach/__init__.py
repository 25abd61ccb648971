"""Teaching the map (--attention-maps): the given maps and their loaders (attention_maps;
`python -m utils.teach.attention_maps DIR` writes the shapes masks as such a folder), and the
options and Task of a fine-tuning run (fine_tune). The loss is utils.objectives.attention_map."""
