"""Weight conversion between timm's VisionTransformer, transformers' ViTForImageClassification and vit-custom."""

import json
import logging
import os
import re
from functools import partial
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.layers import Attention, Mlp, PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..files import check_output_folder, replacing
from ..image_processing import PreprocessSettings
from ..training.models import class_names_of, logits_of

logger = logging.getLogger(__name__)

CONVERSION_FILE = "conversion.json"
# Keys that give a timm ViT feature vit-custom does not have, and the feature's name for the error message.
UNSUPPORTED_TIMM_KEYS = {
    r"^reg_token$": "register tokens (reg_tokens > 0)",
    r"^norm_pre\.": "a norm before the blocks (pre_norm=True, as CLIP)",
    r"^fc_norm\.": "a norm after pooling (fc_norm, timm's global_pool='avg' default)",
    r"^attn_pool\.": "attention pooling (global_pool='map' or 'prr')",
    r"\.ls[12]\.": "layer scale (init_values)",
    r"\.attn\.[qk]_norm\.": "query/key normalisation (qk_norm=True)",
    r"\.attn\.norm\.": "a norm inside attention (scale_attn_norm=True)",
    r"\.mlp\.norm\.": "a norm inside the MLP (scale_mlp_norm=True)",
    r"^patch_embed\.norm\.": "a norm after the patch embedding (embed_norm_layer)",
    r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.": "a gated MLP (SwiGLU)",
}
# Our activation names (keys of transformers' ACT2FN) for timm's activation modules.
GELU_APPROXIMATIONS = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}


def _layer_indices(keys, prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return sorted({int(m.group(1)) for key in keys if (m := pattern.match(key))})


def _timm_keys(depth: int, qkv_bias: bool, head: bool) -> set[str]:
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        b = f"blocks.{i}."
        keys |= {b + name for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight")}
        keys |= {b + f"{layer}.{kind}" for layer in ("attn.proj", "mlp.fc1", "mlp.fc2") for kind in ("weight", "bias")}
        if qkv_bias:
            keys.add(b + "attn.qkv.bias")
    if head:
        keys |= {"head.weight", "head.bias"}
    return keys


def _check_timm_keys(state_dict: dict, depth: int, qkv_bias: bool) -> None:
    """Raises on any key of a timm feature we lack, and on any key a plain ViT must have that is missing."""
    keys = set(state_dict)
    unsupported = {}
    for key in sorted(keys):
        for pattern, feature in UNSUPPORTED_TIMM_KEYS.items():
            if re.search(pattern, key):
                unsupported.setdefault(feature, []).append(key)
    if unsupported:
        found = "; ".join(
            f"{feature}: {names[:4]}{' ...' if len(names) > 4 else ''}" for feature, names in unsupported.items()
        )
        raise ValueError(f"timm state dict: expected a plain ViT, got features vit-custom does not have: {found}")
    expected = _timm_keys(depth, qkv_bias, head="head.weight" in keys)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(f"timm state dict: missing keys {missing}, unexpected keys {unexpected}")


def _check_timm_model(model: nn.Module) -> None:
    """Raises unless `model` is a timm VisionTransformer computing what ViTCustomForImageClassification does."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"timm model: expected a timm VisionTransformer, got {type(model).__name__}")
    problems = []
    if not model.has_class_token:
        problems.append("no class token (class_token=False)")
    if model.num_reg_tokens:
        problems.append(f"{model.num_reg_tokens} register tokens")
    if model.no_embed_class:
        problems.append("no position embedding on the class token (no_embed_class=True)")
    if model.pos_embed is None:
        problems.append("no position embedding")
    if model.global_pool not in ("token", "avg") or model.pool_include_prefix or model.attn_pool is not None:
        problems.append(f"global_pool={model.global_pool!r} (we have 'token' and 'avg' over patch tokens)")
    for name in ("norm_pre", "fc_norm", "patch_drop"):
        if not isinstance(getattr(model, name), nn.Identity):
            problems.append(f"{name} is {type(getattr(model, name)).__name__}")
    if not isinstance(model.norm, nn.LayerNorm):
        problems.append(f"final norm is {type(model.norm).__name__}, not LayerNorm")
    embed = model.patch_embed
    if type(embed) is not PatchEmbed or not isinstance(embed.norm, nn.Identity) or embed.dynamic_img_pad:
        problems.append(f"patch embedding {type(embed).__name__} with norm/padding")
    elif embed.img_size[0] != embed.img_size[1] or embed.patch_size[0] != embed.patch_size[1]:
        problems.append(f"non-square image {embed.img_size} or patch {embed.patch_size}")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            problems.append(
                f"block {i} is {type(block).__name__}({type(block.attn).__name__}, {type(block.mlp).__name__})"
            )
            break
        extras = [
            name
            for name in ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm")
            if not isinstance(block.get_submodule(name), nn.Identity)
        ]
        if extras or getattr(block.attn, "gate", None) is not None:
            problems.append(f"block {i} has {extras or ['attention gate']}")
            break
        if not isinstance(block.mlp.act, nn.GELU):
            problems.append(f"block {i} activation {type(block.mlp.act).__name__}, expected GELU")
            break
        eps = getattr(model.norm, "eps", None)
        if any(not isinstance(n, nn.LayerNorm) or n.eps != eps for n in (block.norm1, block.norm2)):
            problems.append(f"block {i} norms differ from the final LayerNorm (eps {eps})")
            break
    if problems:
        raise ValueError(f"timm model: expected a plain ViT, got features vit-custom does not have: {problems}")


def config_from_timm(
    model_or_state_dict: nn.Module | dict,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    **config_kwargs,
) -> ViTCustomConfig:
    """The ViTCustomConfig of a timm ViT, read from the model (or its state dict's shapes), not from its name.

    From a state dict, `num_heads` must be given (shapes do not determine it); `layer_norm_eps` defaults to timm's
    1e-6 and the activation to exact GELU. From a model, both are read off it. `config_kwargs` (e.g. `num_labels`,
    `id2label`, dropout rates) go to the config.
    """
    pooling, hidden_act = "cls", "gelu"
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        _check_timm_model(model)
        num_heads = model.blocks[0].attn.num_heads if num_heads is None else num_heads
        layer_norm_eps = model.norm.eps if layer_norm_eps is None else layer_norm_eps
        pooling = "mean" if model.global_pool == "avg" else "cls"
        hidden_act = GELU_APPROXIMATIONS[model.blocks[0].mlp.act.approximate]
        state_dict = model.state_dict()
    else:
        state_dict = model_or_state_dict
        if num_heads is None:
            raise ValueError("config_from_timm: expected num_heads for a state dict (shapes do not give it), got None")
    layer_norm_eps = 1e-6 if layer_norm_eps is None else layer_norm_eps
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state_dict:
            raise ValueError(f"timm state dict: expected key {key!r} of a ViT with a class token, got none")
    hidden_size = state_dict["cls_token"].shape[-1]
    depth = len(_layer_indices(state_dict, "blocks."))
    qkv_bias = "blocks.0.attn.qkv.bias" in state_dict
    _check_timm_keys(state_dict, depth, qkv_bias)
    embed_dim, num_channels, patch_h, patch_w = state_dict["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise ValueError(f"patch_embed.proj.weight: expected a square patch, got {patch_h}x{patch_w}")
    num_tokens = state_dict["pos_embed"].shape[1]
    grid = round((num_tokens - 1) ** 0.5)
    if grid * grid != num_tokens - 1:
        raise ValueError(
            f"pos_embed: expected 1 + grid**2 tokens (class token plus a square grid), got {num_tokens} "
            "(no_embed_class, register tokens or a non-square grid are not supported)"
        )
    if "head.weight" in state_dict:
        config_kwargs.setdefault("num_labels", state_dict["head.weight"].shape[0])
    return ViTCustomConfig(
        image_size=grid * patch_h,
        patch_size=patch_h,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        intermediate_size=state_dict["blocks.0.mlp.fc1.weight"].shape[0],
        hidden_act=hidden_act,
        qkv_bias=qkv_bias,
        layer_norm_eps=layer_norm_eps,
        pooling=pooling,
        **config_kwargs,
    )


def _conv_to_linear(weight: torch.Tensor) -> torch.Tensor:
    # Our einops patches are flattened as (p1 p2 c), timm's Conv2d kernel as (c p1 p2): permute, then flatten.
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _linear_to_conv(weight: torch.Tensor, patch_size: int, num_channels: int) -> torch.Tensor:
    return weight.reshape(weight.shape[0], patch_size, patch_size, num_channels).permute(0, 3, 1, 2)


def timm_to_ours_state_dict(state_dict: dict, config: ViTCustomConfig) -> dict:
    """timm ViT state dict -> ViTCustomForImageClassification state dict (head included when present)."""
    _check_timm_keys(state_dict, config.num_hidden_layers, config.qkv_bias)
    ours = {
        "vit.embeddings.cls_token": state_dict["cls_token"],
        "vit.embeddings.position_embeddings": state_dict["pos_embed"],
        "vit.embeddings.patch_proj.weight": _conv_to_linear(state_dict["patch_embed.proj.weight"]),
        "vit.embeddings.patch_proj.bias": state_dict["patch_embed.proj.bias"],
        "vit.norm.weight": state_dict["norm.weight"],
        "vit.norm.bias": state_dict["norm.bias"],
    }
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            ours["vit.encoder.layers." + key[len("blocks.") :]] = value
        elif key.startswith("head."):
            ours[key] = value
    return {key: value.detach().clone() for key, value in ours.items()}


def _check_no_conv_stem(config: ViTCustomConfig) -> None:
    if config.conv_stem_depth:
        raise ValueError(
            "conv_stem_depth: timm's VisionTransformer embeds patches linearly, so a model with a convolutional stem "
            f"has no timm counterpart to convert to: expected 0, got {config.conv_stem_depth}"
        )


def ours_to_timm_state_dict(state_dict: dict, config: ViTCustomConfig) -> dict:
    """ViTCustomForImageClassification (or ViTCustomModel) state dict -> timm VisionTransformer state dict."""
    _check_no_conv_stem(config)
    prefix = "vit." if "vit.embeddings.cls_token" in state_dict else ""
    timm_sd = {
        "cls_token": state_dict[f"{prefix}embeddings.cls_token"],
        "pos_embed": state_dict[f"{prefix}embeddings.position_embeddings"],
        "patch_embed.proj.weight": _linear_to_conv(
            state_dict[f"{prefix}embeddings.patch_proj.weight"], config.patch_size, config.num_channels
        ),
        "patch_embed.proj.bias": state_dict[f"{prefix}embeddings.patch_proj.bias"],
        "norm.weight": state_dict[f"{prefix}norm.weight"],
        "norm.bias": state_dict[f"{prefix}norm.bias"],
    }
    layers = f"{prefix}encoder.layers."
    for key, value in state_dict.items():
        if key.startswith(layers):
            timm_sd["blocks." + key[len(layers) :]] = value
        elif key.startswith("head."):
            timm_sd[key] = value
    _check_timm_keys(timm_sd, config.num_hidden_layers, config.qkv_bias)
    return {key: value.detach().clone() for key, value in timm_sd.items()}


def _source_labels(num_classes: int, model: nn.Module | None) -> dict:
    """id2label of the source's head: the class names its pretrained config records (a `--model timm:` run's folder,
    loaded as `local-dir:`), else timm's bundled ImageNet class descriptions for an ImageNet head, else {}."""
    names = class_names_of(model) if model is not None else None
    if names is not None and len(names) == num_classes:
        return dict(enumerate(names))
    subset = infer_imagenet_subset(model) if model is not None else None
    if subset is None:
        return {}
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return {}
    return {i: info.index_to_description(i) for i in range(num_classes)}


def _load_matching(model: ViTCustomForImageClassification, ours_sd: dict) -> None:
    """Loads everything, keeping our freshly initialised head when the source's head has another class count."""
    own = model.state_dict()
    head = {key for key in ours_sd if key.startswith("head.")}
    if head and any(ours_sd[key].shape != own[key].shape for key in head if key in own):
        logger.warning(
            "Source head has %d classes, the model %d: converted the backbone; the head was left new (random)",
            ours_sd["head.weight"].shape[0],
            model.config.num_labels,
        )
        ours_sd = {key: value for key, value in ours_sd.items() if key not in head}
    elif not head and model.config.num_labels > 0:
        logger.warning("Source has no classification head: converted the backbone; the head was left new (random)")
    shapes = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in ours_sd.items() if k in own and v.shape != own[k].shape
    ]
    if shapes:
        raise ValueError(f"state dict: expected shapes matching the config, got (key, source, expected) {shapes}")
    result = model.load_state_dict(ours_sd, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"state dict: missing keys {missing}, unexpected keys {result.unexpected_keys}")


def from_timm(
    model_or_state_dict: nn.Module | dict,
    num_labels: int | None = None,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    **config_kwargs,
) -> ViTCustomForImageClassification:
    """A ViTCustomForImageClassification with the weights of a timm ViT (model or state dict), in eval mode.

    With `num_labels` other than the source's class count, the backbone is converted and the head left new.
    """
    model = model_or_state_dict if isinstance(model_or_state_dict, nn.Module) else None
    state_dict = model.state_dict() if model is not None else model_or_state_dict
    source_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    if num_labels is None:
        num_labels = source_classes
        if num_labels == 0:
            raise ValueError("from_timm: the source has no classification head; expected num_labels, got None")
    if num_labels == source_classes and "id2label" not in config_kwargs:
        labels = _source_labels(num_labels, model)
        if labels:
            config_kwargs["id2label"] = labels
    if "id2label" not in config_kwargs:
        config_kwargs["num_labels"] = num_labels
    config = config_from_timm(model_or_state_dict, num_heads=num_heads, layer_norm_eps=layer_norm_eps, **config_kwargs)
    ours = ViTCustomForImageClassification(config)
    _load_matching(ours, timm_to_ours_state_dict(state_dict, config))
    return ours.eval()


def timm_kwargs(config: ViTCustomConfig) -> dict:
    """Keyword arguments of timm's VisionTransformer that build the network `config` describes."""
    _check_no_conv_stem(config)
    act = {value: key for key, value in GELU_APPROXIMATIONS.items()}
    if config.hidden_act not in act:
        raise ValueError(f"hidden_act: expected one of {sorted(act)} to build a timm model, got {config.hidden_act!r}")
    mlp_ratio = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * mlp_ratio) != config.intermediate_size:
        raise ValueError(
            f"intermediate_size: expected a width timm can express as int(hidden_size * mlp_ratio), "
            f"got {config.intermediate_size} for hidden_size {config.hidden_size}"
        )
    return {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "num_classes": config.num_labels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": config.qkv_bias,
        # timm's 'avg' without fc_norm averages the normed patch tokens: exactly our mean pooling.
        "global_pool": "avg" if config.pooling == "mean" else "token",
        "fc_norm": False,
        "norm_layer": partial(nn.LayerNorm, eps=config.layer_norm_eps),
        "act_layer": partial(nn.GELU, approximate=act[config.hidden_act]),
        "drop_rate": 0.0,
        "proj_drop_rate": config.hidden_dropout_prob,
        "pos_drop_rate": config.hidden_dropout_prob,
        "attn_drop_rate": config.attention_probs_dropout_prob,
        "drop_path_rate": config.drop_path_rate,
    }


def to_timm(model: ViTCustomForImageClassification) -> VisionTransformer:
    """A timm VisionTransformer with the weights of `model`, in eval mode."""
    timm_model = VisionTransformer(**timm_kwargs(model.config))
    timm_model.load_state_dict(ours_to_timm_state_dict(model.state_dict(), model.config), strict=True)
    return timm_model.eval()


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


def load_timm_checkpoint(path: str | os.PathLike) -> dict:
    """A state dict from a `.safetensors`, `.bin`, `.pth` or `.pt` file (torch files with weights_only=True);
    unwraps `state_dict` / `model` entries and a `module.` prefix, as timm does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected a file, got {path}")
    if path.suffix not in (".safetensors", ".bin", ".pth", ".pt"):
        raise ValueError(f"checkpoint {path}: expected .safetensors, .bin, .pth or .pt, got {path.suffix!r}")
    return timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)


def build_timm_model(name: str, checkpoint: str | os.PathLike | None = None, pretrained: bool = False) -> nn.Module:
    """timm model `name` in eval mode: random or pretrained weights, or (with `checkpoint`) that file's weights, whose
    keys and shapes must match the architecture `name` gives (class count read from the checkpoint's head)."""
    if checkpoint is None:
        return timm.create_model(name, pretrained=pretrained).eval()
    state_dict = load_timm_checkpoint(checkpoint)
    num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    shapes = [
        (key, tuple(value.shape), tuple(expected[key].shape))
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit timm model {name!r}: missing keys {missing}, unexpected keys "
            f"{unexpected}, shape mismatches (key, checkpoint, model) {shapes}"
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_converted(
    model: ViTCustomForImageClassification,
    output_dir: str | os.PathLike,
    image_processor,
    record: dict,
    overwrite: bool = False,
) -> Path:
    """Writes the self-contained folder (config, code, safetensors, image processor, conversion.json) whole or not
    at all."""
    output_dir = check_output_folder(output_dir, overwrite)
    with replacing(output_dir, folder=True) as staging:
        model.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        (staging / CONVERSION_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return output_dir


@torch.no_grad()
def max_abs_logit_diff(a: nn.Module, b: nn.Module, pixel_values: torch.Tensor) -> float:
    """Largest |logit difference| of two classifiers (ours or timm) on the same input, both in eval mode."""
    return (logits_of(a.eval(), pixel_values).float() - logits_of(b.eval(), pixel_values).float()).abs().max().item()


def convert_timm(
    timm_model: str,
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    num_labels: int | None = None,
    overwrite: bool = False,
) -> dict:
    """The conversion command: timm model (or checkpoint) -> verified, self-contained vit-custom folder.

    Returns the record written to conversion.json, including the max |logit difference| measured on random input.
    """
    source = build_timm_model(timm_model, checkpoint=checkpoint, pretrained=pretrained)
    ours = from_timm(source, num_labels=num_labels)
    settings = PreprocessSettings.from_timm(source)
    generator = torch.Generator().manual_seed(0)
    size = ours.config.image_size
    pixel_values = torch.randn(2, ours.config.num_channels, size, size, generator=generator)
    head_converted = ours.config.num_labels == source.num_classes
    record = {
        "timm_model": timm_model,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "pretrained": pretrained and checkpoint is None,
        "head_converted": head_converted,
        "num_labels": ours.config.num_labels,
        # Compared only when the head came across; a new head makes the logits differ by design.
        "max_abs_logit_diff": max_abs_logit_diff(ours, source, pixel_values) if head_converted else None,
        "timm_version": timm.__version__,
    }
    save_converted(ours, output_dir, settings.to_image_processor(), record, overwrite=overwrite)
    logger.info("Converted %s to %s (max |logit diff| %s)", timm_model, output_dir, record["max_abs_logit_diff"])
    return record


def convert_hf_vit(model_dir: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """The conversion command for a local transformers ViTForImageClassification folder (`google/vit-*` format):
    -> vit-custom folder with the source's own image processor, so `pipeline` preprocesses as before."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"hf_model: expected a saved transformers folder with config.json, got {model_dir}")
    source = ViTForImageClassification.from_pretrained(model_dir).eval()
    ours = from_hf_vit(source)
    size = ours.config.image_size
    pixel_values = torch.randn(2, ours.config.num_channels, size, size, generator=torch.Generator().manual_seed(0))
    record = {
        "hf_model": str(model_dir),
        "checkpoint": str(model_dir),
        "head_converted": True,
        "num_labels": ours.config.num_labels,
        "max_abs_logit_diff": max_abs_logit_diff(ours, source, pixel_values),
    }
    if (model_dir / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(model_dir)
    else:
        logger.warning("%s has no preprocessor_config.json; saving the default preprocessing", model_dir)
        processor = PreprocessSettings(image_size=size).to_image_processor()
    save_converted(ours, output_dir, processor, record, overwrite=overwrite)
    return record
