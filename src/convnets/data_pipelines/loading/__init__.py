"""From shards to batches: augmentation presets, the DALI graph and loader, the torch loader, the epoch plan,
the DataModule."""
