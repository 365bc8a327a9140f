"""Pillow, imported where an image is first read or resized, so that `import mcvd` needs no more than the
core install (torch, numpy, pyyaml, tqdm)."""
from __future__ import annotations


def pil_image():
    """PIL.Image, or ModuleNotFoundError naming the package to install."""
    try:
        from PIL import Image
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("reading and resizing images needs Pillow: pip install pillow "
                                  "(or pip install 'mcvd[data]')") from err
    return Image
