"""Images -> webdataset shards (+ DALI .idx + manifest.json) -> DALI or torch pipeline -> DataModule."""
