"""Offline data preparation: source datasets -> WebDataset shards (the format: ``docs/data.md``)."""
