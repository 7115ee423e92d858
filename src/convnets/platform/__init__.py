"""Training platform: LightningModule, callbacks, the LightningCLI subclass, demo, evaluate, bench."""
