"""Vision models: the text-to-image generator (diffusers) and the CLIP scorer (open_clip)."""
