"""vit-custom: a Vision Transformer as a transformers model, with its training-side tools."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_vit_custom import ViTCustomConfig
from .modeling_vit_custom import ViTCustomForImageClassification, ViTCustomModel, ViTCustomPreTrainedModel

__all__ = ["ViTCustomConfig", "ViTCustomForImageClassification", "ViTCustomModel", "ViTCustomPreTrainedModel"]

AutoConfig.register(ViTCustomConfig.model_type, ViTCustomConfig, exist_ok=True)
AutoModel.register(ViTCustomConfig, ViTCustomModel, exist_ok=True)
AutoModelForImageClassification.register(ViTCustomConfig, ViTCustomForImageClassification, exist_ok=True)
# save_pretrained copies both model files and writes auto_map, so saved folders load with trust_remote_code=True.
ViTCustomConfig.register_for_auto_class()
ViTCustomModel.register_for_auto_class("AutoModel")
ViTCustomForImageClassification.register_for_auto_class("AutoModelForImageClassification")
