"""Data in: source formats -> the manifest, the embedded scenes data set, the vocabulary,
and image loading. The bottom layer: imports nothing from the rest of pipeline/."""
