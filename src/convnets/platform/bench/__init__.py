"""`convnets bench`: model, data, end-to-end, evaluation and time-to-accuracy benchmarks."""
