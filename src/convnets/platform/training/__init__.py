"""The LightningModule, its recipe, metrics, callbacks, checkpoints, LightningCLI, tracking and DDP fault handling."""
