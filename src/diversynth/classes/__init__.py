"""Class lists and the names the generator is prompted with."""

from diversynth.classes.catalog import ClassEntry, load_class_list

__all__ = ["ClassEntry", "load_class_list"]
