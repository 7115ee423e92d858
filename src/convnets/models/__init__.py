"""Pure torch.nn models, one file per family, and the registry that names them."""
from convnets.models.registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
