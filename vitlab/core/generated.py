"""What both generated sets (the classifier's coats and the captioner's scenes) share: one
palette of named colours, the split ids that seed each image's generator, and how their PNGs
are written."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (225, 205, 30),
    "green": (40, 165, 55),
    "teal": (20, 165, 165),
    "blue": (35, 75, 215),
    "purple": (135, 55, 200),
    "pink": (240, 110, 185),
}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Thousands of small generated PNGs: the fastest zlib level (the same pixels; level 6, Pillow's
# default, spent 2 s of fetch_captions' 11 s compressing).
PNG_OPTIONS = {"compress_level": 1}
