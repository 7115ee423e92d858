"""`convnets evaluate`: multi-crop test of a checkpoint, its report and plots."""
