"""Prompt strategies: the texts the generator is given, with a seed per image."""
