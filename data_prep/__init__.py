"""Offline data preparation: source datasets -> WebDataset shards (design.md, "The shard contract")."""
