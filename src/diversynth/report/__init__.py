"""The report: a static HTML page of the run (classes, prompts, images, metrics)."""
