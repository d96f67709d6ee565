"""diversynth: diversified synthetic images for image-classifier training."""

__version__ = "0.1.0"
