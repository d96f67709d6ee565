"""The parts of `benchmarks/generate_gpu.py`: `common` (the model, prompts, config, the plain
pipeline's timing), `speed` (one engine setting against plain diffusers), `study` (the
study's process and JSON), `variants`, `lossy`, `resume_check` and `probes`."""
