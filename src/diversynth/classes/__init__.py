"""Class lists and the names the generator is prompted with."""

from diversynth.classes.catalog import ClassEntry, load_classes

__all__ = ["ClassEntry", "load_classes"]
