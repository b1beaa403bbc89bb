"""Errors the user fixes (a weights file, a package to install), not bugs: the stage
scripts and caption-batch print their message instead of a traceback. Kept out of
pipeline/encoders/ so catching one does not import the encoder registry (torchvision)."""
from __future__ import annotations


class EncoderWeightsError(RuntimeError):
    """Weights that cannot be found or do not fit the chosen encoder."""
