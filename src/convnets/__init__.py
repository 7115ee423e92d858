"""convnets: train the AlexNet family (and LeNet-5) on shards through DALI, Lightning and W&B."""

__version__ = "0.1.0"
