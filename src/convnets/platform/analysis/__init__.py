"""`convnets analyze`: Zeiler & Fergus analyses of a trained network (invariance, layer probes)."""
