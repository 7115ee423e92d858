"""Runs built from many fits: sweeps, the ablation study and the demo."""
