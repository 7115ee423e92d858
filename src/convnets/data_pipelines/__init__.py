"""Images -> webdataset shards (+ DALI .idx + manifest.json) -> DALI pipeline -> DataModule."""
