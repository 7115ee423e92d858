"""The shard format: writer, index, manifest, verify, and the sources that feed the writer (ImageNet, MNIST,
folders)."""
