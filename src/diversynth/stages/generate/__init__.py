"""The generate stage: prompts -> WebDataset shards, shard stats and a parquet manifest."""

from __future__ import annotations

from diversynth.stages.declaration import Stage
from diversynth.stages.generate.stage import (
    discard_damaged,
    estimate_generate,
    generate_is_complete,
    generate_output_digest,
    recorded_tar_sha,
    run_generate,
)

STAGE = Stage(
    "generate",
    version=1,
    pooled=True,
    run=run_generate,
    sections=("generate", "clip", "prompts"),
    requires=("generate",),
    needs=("classes", "prompts"),
    outputs=lambda r: [r.manifest],
    inputs=lambda c: [c.generate.model if c.generate else None, c.clip.model if c.clip else None],
    complete=generate_is_complete,
    digest=generate_output_digest,
    recorded=lambda r: [
        r.manifest,
        *sorted(r.shards.glob("*.tar")),
        *sorted(r.shards.glob("*.rows.parquet")),
        *sorted(r.shards.glob("*.json")),
    ],  # fmt: skip
    expected_sha=recorded_tar_sha,
    # each shard's prompt records carry what the prompts settings do to it: without
    # them, a shard whose prompts a prompts change left alone is kept
    settings_without=("prompts",),
    discard=discard_damaged,
    resumable=True,
    options=("max_shards", "allow_version_change"),
    # either engine, any number of workers: the same shards, so switching keeps them
    ignores=("generate.engine", "generate.ray"),
    estimate=estimate_generate,
)
