"""Imports every model family so its builders register (see registry._ensure_loaded)."""
from convnets.models import alexnet, lenet  # noqa: F401
