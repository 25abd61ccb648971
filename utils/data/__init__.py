"""Data: the data sets and their transforms (datasets), loaders with a seeded epoch
(loaders), the device-resident fast path (fastdata), the offline `shapes` and `shapes-multi`
sets (shapes, attributes), image files and their one reader (images), and what explain.py
explains (inputs)."""
