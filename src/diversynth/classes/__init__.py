"""Class lists and the names the generator is prompted with."""

from diversynth.classes.catalog import load_classes
from diversynth.classes.entry import ClassEntry

__all__ = ["ClassEntry", "load_classes"]
