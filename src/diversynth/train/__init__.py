"""Classifier training on real + synthetic images, and its evaluation."""
