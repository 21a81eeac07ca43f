"""vit-custom: a Vision Transformer as a transformers model, with its training-side tools.

The model classes load on first use, and registering them with the Auto classes comes with them: importing a tool
(`modeling_vit_custom.data.arguments`, say) loads neither torch nor the model.
"""

import importlib
from functools import cache

__all__ = ["ViTCustomConfig", "ViTCustomForImageClassification", "ViTCustomModel", "ViTCustomPreTrainedModel"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register_auto_classes()
    module = "configuration_vit_custom" if name == "ViTCustomConfig" else "modeling_vit_custom"
    return getattr(importlib.import_module(f".{module}", __name__), name)


@cache
def _register_auto_classes() -> None:
    """Every Auto class of the config's `auto_map`: in this process (AutoConfig, AutoModel... find the classes) and for
    `save_pretrained`, which then copies both model files into the folder it writes, so the folder loads anywhere
    with trust_remote_code=True."""
    import transformers

    from .configuration_vit_custom import AUTO_MAP, ViTCustomConfig

    modeling = importlib.import_module(".modeling_vit_custom", __name__)
    transformers.AutoConfig.register(ViTCustomConfig.model_type, ViTCustomConfig, exist_ok=True)
    ViTCustomConfig.register_for_auto_class()
    for auto_class, reference in AUTO_MAP.items():
        if auto_class == "AutoConfig":
            continue
        model_class = getattr(modeling, reference.rsplit(".", 1)[1])
        getattr(transformers, auto_class).register(ViTCustomConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class)
