"""Pure torch.nn models, one file per family, and the registry that names them.

As in torchvision's `models/__init__.py`, importing the package imports every family module, whose
`@register_model` decorators fill the registry; the registry itself imports no model file, so
imports point one way (registry <- families <- this package) with no cycle.
"""

from convnets.models import alexnet, lenet  # noqa: F401  (registers their builders)
from convnets.models.registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
