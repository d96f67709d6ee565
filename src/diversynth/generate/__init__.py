"""The generate stage: prompts -> WebDataset shards, shard stats and a parquet manifest."""
