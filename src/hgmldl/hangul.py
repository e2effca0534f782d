"""Korean names in terminal tables (the commands' class names, summary()'s layer names): a Hangul syllable takes two
columns, so str.ljust misaligns."""

import unicodedata


def padded(name: str, width: int = 12) -> str:
    """`name` padded to `width` terminal columns, counting each wide (Hangul) character as two."""
    columns = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in name)
    return name + " " * max(width - columns, 0)
