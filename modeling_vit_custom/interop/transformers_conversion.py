"""Conversion of transformers' own vision models (ViTForImageClassification, Dinov2Model, Dinov2WithRegistersModel)
to vit-custom, and the conversion command for their saved folders."""

import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers.activations import ACT2FN

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..image_processing import PreprocessSettings
from .timm_conversion import _conv_to_linear, _load_matching, _rename, max_abs_logit_diff, save_converted

logger = logging.getLogger(__name__)


HF_LAYER_RENAMES = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.o_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}


def from_hf_vit(hf_model: nn.Module) -> ViTCustomForImageClassification:
    """transformers' ViTForImageClassification (`google/vit-*` format) -> ours, in eval mode.

    The network is the same as timm's ViT except LayerNorm eps (1e-12 in `google/vit-*` configs), which is kept from
    the source config, and the patch embedding, a Conv2d there as in timm. Query, key and value are fused into qkv.
    """
    from transformers import ViTForImageClassification

    if not isinstance(hf_model, ViTForImageClassification):
        raise ValueError(
            f"from_hf_vit: expected a transformers ViTForImageClassification, got {type(hf_model).__name__}"
        )
    hf = hf_model.config
    if getattr(hf, "use_mask_token", False) or hf.hidden_act not in ("gelu", "gelu_pytorch_tanh"):
        raise ValueError(f"from_hf_vit: expected a plain ViT with gelu, got hidden_act={hf.hidden_act!r}")
    config = ViTCustomConfig(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        num_channels=hf.num_channels,
        hidden_size=hf.hidden_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        hidden_act=hf.hidden_act,
        hidden_dropout_prob=hf.hidden_dropout_prob,
        attention_probs_dropout_prob=hf.attention_probs_dropout_prob,
        qkv_bias=hf.qkv_bias,
        layer_norm_eps=hf.layer_norm_eps,
        initializer_range=hf.initializer_range,
        id2label=dict(hf.id2label),
    )
    sd = hf_model.state_dict()
    ours = {
        "vit.embeddings.cls_token": sd.pop("vit.embeddings.cls_token"),
        "vit.embeddings.position_embeddings": sd.pop("vit.embeddings.position_embeddings"),
        "vit.embeddings.patch_proj.weight": _conv_to_linear(
            sd.pop("vit.embeddings.patch_embeddings.projection.weight")
        ),
        "vit.embeddings.patch_proj.bias": sd.pop("vit.embeddings.patch_embeddings.projection.bias"),
        "vit.norm.weight": sd.pop("vit.layernorm.weight"),
        "vit.norm.bias": sd.pop("vit.layernorm.bias"),
        "head.weight": sd.pop("classifier.weight"),
        "head.bias": sd.pop("classifier.bias"),
    }
    for i in range(hf.num_hidden_layers):
        src, dst = f"vit.layers.{i}.", f"vit.encoder.layers.{i}."
        kinds = ("weight", "bias") if hf.qkv_bias else ("weight",)
        for kind in kinds:
            ours[f"{dst}attn.qkv.{kind}"] = torch.cat([sd.pop(f"{src}attention.{p}_proj.{kind}") for p in "qkv"])
        for old, new in HF_LAYER_RENAMES.items():
            for kind in ("weight", "bias"):
                ours[f"{dst}{new}{kind}"] = sd.pop(f"{src}{old}{kind}")
    if sd:
        raise ValueError(f"from_hf_vit: unexpected keys {sorted(sd)}")
    model = ViTCustomForImageClassification(config)
    model.load_state_dict({key: value.detach().clone() for key, value in ours.items()}, strict=True)
    return model.eval()


DINOV2_LAYER_RENAMES = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attention.o_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
}
DINOV2_LAYER_RENAMES |= {
    "mlp.fc2.": "mlp.fc2.",
    "mlp.down_proj.": "mlp.fc2.",
    "layer_scale1.": "ls1.",
    "layer_scale2.": "ls2.",
}


def from_hf_dinov2(hf_model: nn.Module, num_labels: int | None = None) -> ViTCustomForImageClassification:
    """transformers' Dinov2Model / Dinov2WithRegistersModel (or their ...ForImageClassification) -> ours, in eval
    mode, with the same last_hidden_state and pooler_output (the normed class token).

    DINOv2 with registers gives the class token a position embedding and the registers none: the class token's row
    is added to the token itself (exact at any size, since both implementations keep that row apart when resampling)
    and the model has `prefix_position_embeddings=False`. The SwiGLU MLP's gate and up projections become our gated
    `fc1`. transformers' DINOv2 classifier reads the class token and the patch mean side by side (2 x hidden_size),
    which our one-vector head cannot: it is refused, and the backbone converts with a new head for `num_labels`.
    """
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    backbone = getattr(hf_model, "dinov2", getattr(hf_model, "dinov2_with_registers", hf_model))
    if not isinstance(backbone, (Dinov2Model, Dinov2WithRegistersModel)):
        raise ValueError(
            f"from_hf_dinov2: expected a transformers Dinov2Model or Dinov2WithRegistersModel, got "
            f"{type(hf_model).__name__}"
        )
    if backbone is not hf_model and num_labels is None:
        raise ValueError(
            f"from_hf_dinov2: {type(hf_model).__name__}'s classifier reads the class token and the patch mean "
            "concatenated, which vit-custom's head cannot; expected num_labels for a new head, got None"
        )
    hf = backbone.config
    if hf.hidden_act not in ACT2FN or hf.drop_path_rate < 0:
        raise ValueError(f"from_hf_dinov2: expected an activation of ACT2FN, got {hf.hidden_act!r}")
    sd = {key: value.detach() for key, value in backbone.state_dict().items()}
    sd.pop("embeddings.mask_token")  # masked image modelling only
    registers = sd.pop("embeddings.register_tokens", None)
    swiglu = hf.use_swiglu_ffn
    mlp_width = sd["encoder.layer.0.mlp.down_proj.weight" if swiglu else "encoder.layer.0.mlp.fc2.weight"].shape[1]
    config = ViTCustomConfig(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        num_channels=hf.num_channels,
        hidden_size=hf.hidden_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        intermediate_size=mlp_width,
        hidden_act="silu" if swiglu else hf.hidden_act,
        mlp_type="gated" if swiglu else "plain",
        qkv_bias=hf.qkv_bias,
        layer_norm_eps=hf.layer_norm_eps,
        layer_scale_init_value=hf.layerscale_value,
        num_register_tokens=0 if registers is None else registers.shape[1],
        prefix_position_embeddings=registers is None,
        num_labels=num_labels or 1000,
    )
    position = sd.pop("embeddings.position_embeddings")
    cls_token = sd.pop("embeddings.cls_token")
    ours = {
        "vit.embeddings.patch_proj.weight": _conv_to_linear(sd.pop("embeddings.patch_embeddings.projection.weight")),
        "vit.embeddings.patch_proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
        "vit.norm.weight": sd.pop("layernorm.weight"),
        "vit.norm.bias": sd.pop("layernorm.bias"),
    }
    if registers is None:
        ours |= {"vit.embeddings.cls_token": cls_token, "vit.embeddings.position_embeddings": position}
    else:
        ours |= {
            "vit.embeddings.cls_token": cls_token + position[:, :1],
            "vit.embeddings.register_tokens": registers,
            "vit.embeddings.position_embeddings": position[:, 1:],
        }
    for i in range(hf.num_hidden_layers):
        src, dst = f"encoder.layer.{i}.", f"vit.encoder.layers.{i}."
        for kind in ("weight", "bias") if hf.qkv_bias else ("weight",):
            ours[f"{dst}attn.qkv.{kind}"] = torch.cat([sd.pop(f"{src}attention.{p}_proj.{kind}") for p in "qkv"])
        if swiglu:
            for kind in ("weight", "bias"):
                gate, up = sd.pop(f"{src}mlp.gate_proj.{kind}"), sd.pop(f"{src}mlp.up_proj.{kind}")
                ours[f"{dst}mlp.fc1.{kind}"] = torch.cat([gate, up])
        for key in [key for key in sd if key.startswith(src)]:
            name = _rename(key[len(src) :], DINOV2_LAYER_RENAMES)
            if name is not None:
                ours[dst + name.replace(".lambda1", ".gamma")] = sd.pop(key)
    if sd:
        raise ValueError(f"from_hf_dinov2: unexpected keys {sorted(sd)}")
    model = ViTCustomForImageClassification(config)
    _load_matching(model, {key: value.clone() for key, value in ours.items()})
    return model.eval()


DINOV2_TYPES = ("dinov2", "dinov2_with_registers")


def convert_hf_vit(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False, num_labels: int | None = None
) -> dict:
    """The conversion command for a local transformers folder: ViTForImageClassification (`google/vit-*` format), or
    a DINOv2 (with or without registers) backbone, whose head is new (`num_labels` classes, default 1000) ->
    vit-custom folder with the source's own image processor, so `pipeline` preprocesses as before."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTForImageClassification

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"hf_model: expected a saved transformers folder with config.json, got {model_dir}")
    model_type = AutoConfig.from_pretrained(model_dir).model_type
    if model_type in DINOV2_TYPES:
        source = AutoModel.from_pretrained(model_dir).eval()  # the backbone, also of a ...ForImageClassification
        ours = from_hf_dinov2(source, num_labels=num_labels)
    elif model_type == "vit":
        source = ViTForImageClassification.from_pretrained(model_dir).eval()
        ours = from_hf_vit(source)
    else:
        raise ValueError(
            f"hf_model: expected a transformers vit, dinov2 or dinov2_with_registers folder, got {model_type!r}"
        )
    size = ours.config.image_size
    pixel_values = torch.randn(2, ours.config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    record = {"hf_model": str(model_dir), "checkpoint": str(model_dir), "num_labels": ours.config.num_labels}
    if model_type == "vit":
        record |= {"head_converted": True, "max_abs_logit_diff": max_abs_logit_diff(ours, source, pixel_values)}
    else:
        with torch.no_grad():
            theirs, mine = source(pixel_values).last_hidden_state, ours.vit(pixel_values).last_hidden_state
        record |= {"head_converted": False, "max_abs_hidden_state_diff": (theirs - mine).abs().max().item()}
    if (model_dir / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(model_dir)
    else:
        logger.warning("%s has no preprocessor_config.json; saving the default preprocessing", model_dir)
        processor = PreprocessSettings(image_size=size).to_image_processor()
    save_converted(ours, output_dir, processor, record, overwrite=overwrite)
    return record
