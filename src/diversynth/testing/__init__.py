"""Helpers for the test suite and the benchmarks, importable by both: LLM servers that
answer as a real one would or misbehave on purpose, llama.cpp's server on a GGUF, and the
driver that kills generating runs mid-shard."""
