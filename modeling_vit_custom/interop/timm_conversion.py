"""Weight conversion between timm's VisionTransformer and vit-custom, both ways, and the conversion command."""

import json
import logging
import os
import re
from functools import partial
from pathlib import Path

import timm
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.layers import Attention, AttentionPoolLatent, GluMlp, Mlp, PatchEmbed, QuickGELU, RmsNorm, SwiGLU
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from transformers.activations import ACT2FN

from .. import ViTCustomConfig, ViTCustomForImageClassification
from ..files import check_output_folder, replacing
from ..image_processing import PreprocessSettings
from ..training.models import class_names_of, logits_of

logger = logging.getLogger(__name__)

CONVERSION_FILE = "conversion.json"
# Keys of timm ViT features vit-custom does not have, and the feature's name for the error message.
UNSUPPORTED_TIMM_KEYS = {
    r"\.attn\.gate\.": "a gated attention output",
    r"^blocks\.\d+\.(attns|mlps|in_proj|in_norm|out_proj)": "parallel blocks",
    r"\.attn\.lambda_|\.attn\.sub_norm\.": "differential attention",
    r"^attn_pool\.(pos_embed|q_norm|k_norm)": "attention pooling with a position embedding or qk-norm",
}
# timm state-dict names -> ours (ViTCustomForImageClassification), by prefix; the patch projection is also reshaped.
TIMM_TO_OURS = {
    "cls_token": "vit.embeddings.cls_token",
    "reg_token": "vit.embeddings.register_tokens",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.": "vit.embeddings.patch_proj.",
    "patch_embed.norm.": "vit.embeddings.patch_norm.",
    "norm_pre.": "vit.norm_pre.",
    "blocks.": "vit.encoder.layers.",
    "norm.": "vit.norm.",
    "fc_norm.": "vit.fc_norm.",
    "attn_pool.": "vit.pooler.",
    "head.": "head.",
}
POOLINGS = {"token": "cls", "avg": "mean", "map": "map"}  # timm's global_pool -> our pooling
# Our activations (keys of transformers' ACT2FN) as timm modules, and the ones a timm model is recognised as.
TIMM_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}
ACTIVATION_PROBE = torch.linspace(-6.0, 6.0, 121)
# From a state dict alone, LayerScale's starting value is unknown (it does not change the converted network).
DEFAULT_LAYER_SCALE = 1e-5


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old) :]
    return None


def _pack_gated_mlps(state_dict: dict) -> dict:
    """timm's SwiGLU (separate `fc1_g` gate and `fc1_x` value) -> the packed `fc1` (gate rows first) of
    timm's SwiGLUPacked and of our gated MLP; other keys unchanged."""
    packed = {}
    for key, value in state_dict.items():
        if ".mlp.fc1_x." in key:
            continue
        if ".mlp.fc1_g." in key:
            packed[key.replace(".fc1_g.", ".fc1.")] = torch.cat([value, state_dict[key.replace("_g.", "_x.")]])
        else:
            packed[key] = value
    return packed


def _unsupported_features(keys) -> dict[str, list[str]]:
    found = {}
    for key in sorted(keys):
        for pattern, feature in UNSUPPORTED_TIMM_KEYS.items():
            if re.search(pattern, key):
                found.setdefault(feature, []).append(key)
    return found


def _refuse(features: list[str] | dict) -> None:
    if isinstance(features, dict):
        features = [f"{name}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for name, keys in features.items()]
    raise ValueError(f"timm model: expected a ViT vit-custom can express, got features it does not have: {features}")


def _activation_name(act: nn.Module) -> str | None:
    """Our name of a timm activation module, recognised by its values (timm has several classes per function)."""
    with torch.no_grad():
        values = act(ACTIVATION_PROBE.clone())
    for name in TIMM_ACTIVATIONS:
        if torch.allclose(values, ACT2FN[name](ACTIVATION_PROBE), rtol=0.0, atol=1e-6):
            return name
    return None


def _norm_kind(norm: nn.Module) -> tuple[str, float] | None:
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None:
        return "layer_norm", norm.eps
    if isinstance(norm, (RmsNorm, nn.RMSNorm)) and getattr(norm, "weight", None) is not None:
        return "rms_norm", norm.eps
    return None


def _read_timm_model(model: nn.Module) -> dict:
    """What the keys do not show of a timm VisionTransformer (heads, norm type and eps, activation, pooling, layer
    scale), as ViTCustomConfig fields; raises, naming every feature vit-custom lacks."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"timm model: expected a timm VisionTransformer, got {type(model).__name__}")
    problems = []
    if model.pos_embed is None:
        problems.append("no position embedding (pos_embed='none')")
    if model.global_pool not in POOLINGS or model.pool_include_prefix:
        problems.append(f"global_pool={model.global_pool!r} pool_include_prefix={model.pool_include_prefix}")
    pool = model.attn_pool
    if pool is not None and (
        type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pool != "token" or pool.mlp is None
    ):
        problems.append(f"attention pooling {type(pool).__name__} other than one latent query with an MLP")
    if not isinstance(model.patch_drop, nn.Identity):
        problems.append("patch dropout (patch_drop_rate > 0)")
    embed = model.patch_embed
    if type(embed) is not PatchEmbed or embed.dynamic_img_pad or not embed.flatten and not model.dynamic_img_size:
        problems.append(f"patch embedding {type(embed).__name__} with padding")
    elif embed.img_size[0] != embed.img_size[1] or embed.patch_size[0] != embed.patch_size[1]:
        problems.append(f"non-square image {embed.img_size} or patch {embed.patch_size}")
    norms, acts = [], []
    for block in model.blocks:
        if type(block) is not Block:
            problems.append(f"{type(block).__name__} blocks (only timm's pre-norm Block)")
            break
        if type(block.attn) is not Attention:
            problems.append(f"{type(block.attn).__name__} (only timm's Attention)")
            break
        mlp = block.mlp
        if type(mlp) not in (Mlp, SwiGLU, GluMlp) or (type(mlp) is GluMlp and mlp.gate_last):
            problems.append(f"MLP {type(mlp).__name__} (plain, SwiGLU, or GluMlp with the gate first)")
            break
        if getattr(block.attn, "gate", None) is not None:
            problems.append("a gated attention output")
        norms += [block.norm1, block.norm2, block.attn.q_norm, block.attn.k_norm, block.attn.norm, mlp.norm]
        acts.append(mlp.act)
    if pool is not None:
        norms.append(pool.norm)
        acts.append(pool.mlp.act)
    norms += [model.norm, model.norm_pre, model.fc_norm, getattr(embed, "norm", nn.Identity())]
    kinds = {_norm_kind(norm) for norm in norms if not isinstance(norm, nn.Identity)}
    if None in kinds or len(kinds) > 1:
        names = sorted({f"{type(n).__name__}(eps={getattr(n, 'eps', None)})" for n in norms})
        problems.append(f"norms {names}: expected one kind, LayerNorm or RMSNorm with weights, and one eps")
    activations = {_activation_name(act) for act in acts}
    if None in activations or len(activations) > 1:
        problems.append(
            f"activations {sorted({type(a).__name__ for a in acts})}: expected one of {list(TIMM_ACTIVATIONS)}"
        )
    if problems:
        _refuse(problems)
    (norm_type, eps), (hidden_act,) = (kinds.pop() if kinds else ("layer_norm", 1e-6)), activations
    ls1 = model.blocks[0].ls1 if len(model.blocks) else nn.Identity()
    return {
        "num_attention_heads": model.blocks[0].attn.num_heads,
        "norm_type": norm_type,
        "layer_norm_eps": eps,
        "hidden_act": hidden_act,
        "pooling": POOLINGS[model.global_pool],
        "layer_scale_init_value": None if isinstance(ls1, nn.Identity) else ls1.init_values,
        "prefix_position_embeddings": not model.no_embed_class,
    }


def config_from_timm(
    model_or_state_dict: nn.Module | dict,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    **config_kwargs,
) -> ViTCustomConfig:
    """The ViTCustomConfig of a timm ViT, read from the model (or its state dict's keys and shapes), not its name.

    From a model, every field is read off it, and a feature vit-custom lacks is refused by name. From a state dict,
    `num_heads` must be given (shapes do not determine it); the keys give the tokens, norms, pooling (attention
    pooling, else the class token, else the mean), layer scale and MLP kind, and what they cannot show defaults to
    timm's (eps 1e-6, exact GELU or SiLU for a gated MLP, LayerNorm unless the norms have no bias); `config_kwargs`
    (e.g. `hidden_act`, `pooling`, `num_labels`, `id2label`, dropout rates) override.
    """
    if isinstance(model_or_state_dict, nn.Module):
        read = _read_timm_model(model_or_state_dict)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
        if num_heads is None:
            raise ValueError("config_from_timm: expected num_heads for a state dict (shapes do not give it), got None")
        read = {}
    unsupported = _unsupported_features(state_dict)
    if unsupported:
        _refuse(unsupported)
    state_dict = _pack_gated_mlps(state_dict)
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"):
        if key not in state_dict:
            raise ValueError(f"timm state dict: expected key {key!r} of a ViT, got none")
    hidden_size, num_channels, patch_h, patch_w = state_dict["patch_embed.proj.weight"].shape
    if patch_h != patch_w:
        raise ValueError(f"patch_embed.proj.weight: expected a square patch, got {patch_h}x{patch_w}")
    class_token = "cls_token" in state_dict
    registers = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    prefix = int(class_token) + registers
    num_tokens = state_dict["pos_embed"].shape[1]
    # A model says whether its prefix tokens have position embeddings; for a state dict, the row count tells.
    given = {**read, **config_kwargs}.get("prefix_position_embeddings")
    candidates = (prefix, 0) if given is None else (prefix if given else 0,)
    embedded_prefix = next(
        (n for n in candidates if n <= num_tokens and round((num_tokens - n) ** 0.5) ** 2 == num_tokens - n), None
    )
    if embedded_prefix is None:
        raise ValueError(
            f"pos_embed: expected a square grid of patches, with or without the {prefix} prefix tokens, got "
            f"{num_tokens} rows"
        )
    grid = round((num_tokens - embedded_prefix) ** 0.5)
    fc1, fc2 = state_dict["blocks.0.mlp.fc1.weight"], state_dict["blocks.0.mlp.fc2.weight"]
    gated = fc1.shape[0] == 2 * fc2.shape[1]
    pre_norm = "norm_pre.weight" in state_dict
    if ("patch_embed.proj.bias" in state_dict) == pre_norm:
        raise ValueError(
            "patch_embed.proj.bias: expected a bias exactly when there is no norm_pre (as timm builds it), got "
            f"{'a bias and' if pre_norm else 'no bias and no'} norm_pre"
        )
    has_layer_scale = "blocks.0.ls1.gamma" in state_dict
    fields = {
        "image_size": grid * patch_h,
        "patch_size": patch_h,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "num_hidden_layers": len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")}),
        "num_attention_heads": num_heads,
        "intermediate_size": fc2.shape[1],
        "hidden_act": "silu" if gated else "gelu",
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "proj_bias": "blocks.0.attn.proj.bias" in state_dict,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state_dict,
        "scale_attn_norm": "blocks.0.attn.norm.weight" in state_dict,
        "scale_mlp_norm": "blocks.0.mlp.norm.weight" in state_dict,
        "layer_scale_init_value": DEFAULT_LAYER_SCALE if has_layer_scale else None,
        "mlp_type": "gated" if gated else "plain",
        "norm_type": "layer_norm" if "blocks.0.norm1.bias" in state_dict else "rms_norm",
        "layer_norm_eps": 1e-6,
        "class_token": class_token,
        "num_register_tokens": registers,
        "prefix_position_embeddings": embedded_prefix == prefix,
        "pre_norm": pre_norm,
        "patch_norm": "patch_embed.norm.weight" in state_dict,
        "final_norm": "norm.weight" in state_dict or "fc_norm.weight" in state_dict,
        "fc_norm": "fc_norm.weight" in state_dict,
        "pooling": "map" if "attn_pool.latent" in state_dict else "cls" if class_token else "mean",
    }
    fields.update({key: value for key, value in read.items() if not (key == "num_attention_heads" and num_heads)})
    if layer_norm_eps is not None:
        fields["layer_norm_eps"] = layer_norm_eps
    if "head.weight" in state_dict:
        config_kwargs.setdefault("num_labels", state_dict["head.weight"].shape[0])
    config = ViTCustomConfig(**{**fields, **config_kwargs})
    _check_keys(state_dict, config)
    return config


def _conv_to_linear(weight: torch.Tensor) -> torch.Tensor:
    # Our einops patches are flattened as (p1 p2 c), timm's Conv2d kernel as (c p1 p2): permute, then flatten.
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _linear_to_conv(weight: torch.Tensor, patch_size: int, num_channels: int) -> torch.Tensor:
    return weight.reshape(weight.shape[0], patch_size, patch_size, num_channels).permute(0, 3, 1, 2)


def _expected_timm_keys(config: ViTCustomConfig, head: bool) -> set[str]:
    """The timm state-dict keys (packed gated MLPs) of the network `config` describes: ours, renamed."""
    with torch.device("meta"):  # names only: nothing allocated
        ours = ViTCustomForImageClassification(config).state_dict()
    ours_to_timm = {new: old for old, new in TIMM_TO_OURS.items()}
    keys = {_rename(key, ours_to_timm) for key in ours if not key.startswith("head.")}
    return keys | ({"head.weight", "head.bias"} if head else set())


def _check_keys(state_dict: dict, config: ViTCustomConfig) -> None:
    """Raises on any missing or unexpected key of a timm state dict (packed gated MLPs) for `config`."""
    _check_no_conv_stem(config)
    keys = set(state_dict)
    expected = _expected_timm_keys(config, head="head.weight" in keys)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(f"timm state dict: missing keys {missing}, unexpected keys {unexpected}")


def timm_to_ours_state_dict(state_dict: dict, config: ViTCustomConfig) -> dict:
    """timm ViT state dict -> ViTCustomForImageClassification state dict (head included when present)."""
    state_dict = _pack_gated_mlps(state_dict)
    _check_keys(state_dict, config)
    ours = {_rename(key, TIMM_TO_OURS): value for key, value in state_dict.items()}
    patch = "vit.embeddings.patch_proj.weight"
    ours[patch] = _conv_to_linear(ours[patch])
    return {key: value.detach().clone() for key, value in ours.items()}


def _check_no_conv_stem(config: ViTCustomConfig) -> None:
    if config.conv_stem_depth:
        raise ValueError(
            "conv_stem_depth: timm's VisionTransformer embeds patches linearly, so a model with a convolutional stem "
            f"has no timm counterpart to convert to: expected 0, got {config.conv_stem_depth}"
        )


def ours_to_timm_state_dict(state_dict: dict, config: ViTCustomConfig) -> dict:
    """ViTCustomForImageClassification (or ViTCustomModel) state dict -> timm VisionTransformer state dict (a gated
    MLP as timm's packed `fc1`, SwiGLUPacked's layout)."""
    _check_no_conv_stem(config)
    prefix = "" if "vit.embeddings.position_embeddings" in state_dict else "vit."
    ours_to_timm = {new: old for old, new in TIMM_TO_OURS.items()}
    timm_sd = {_rename(prefix + key, ours_to_timm): value for key, value in state_dict.items()}
    if None in timm_sd:
        raise ValueError(f"state dict: expected vit-custom keys, got {sorted(state_dict)[:8]}")
    timm_sd["patch_embed.proj.weight"] = _linear_to_conv(
        timm_sd["patch_embed.proj.weight"], config.patch_size, config.num_channels
    )
    _check_keys(timm_sd, config)
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
    """Keyword arguments of timm's VisionTransformer that build the network `config` describes (a gated MLP as
    timm's SwiGLUPacked: GluMlp with the gate first)."""
    _check_no_conv_stem(config)
    if config.hidden_act not in TIMM_ACTIVATIONS:
        raise ValueError(
            f"hidden_act: expected one of {list(TIMM_ACTIVATIONS)} to build a timm model, got {config.hidden_act!r}"
        )
    gated = config.mlp_type == "gated"
    if config.pooling == "map" and (gated or not config.proj_bias or config.scale_mlp_norm):
        raise ValueError(
            "pooling: timm's attention pooling has a plain MLP with biases and no norm, so 'map' converts with "
            f"mlp_type 'plain', proj_bias true and scale_mlp_norm false, got {config.mlp_type!r}, "
            f"{config.proj_bias}, {config.scale_mlp_norm}"
        )
    # timm's MLP width is int(hidden_size * mlp_ratio): half a unit above the width survives the rounding down.
    mlp_ratio = ((2 if gated else 1) * config.intermediate_size + 0.5) / config.hidden_size
    norm = nn.LayerNorm if config.norm_type == "layer_norm" else RmsNorm
    norm_layer = partial(norm, eps=config.layer_norm_eps)
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
        "proj_bias": config.proj_bias,
        "qk_norm": config.qk_norm,
        "scale_attn_norm": config.scale_attn_norm,
        "scale_mlp_norm": config.scale_mlp_norm,
        "init_values": config.layer_scale_init_value,
        "class_token": config.class_token,
        "reg_tokens": config.num_register_tokens,
        "no_embed_class": not config.prefix_position_embeddings,
        "pre_norm": config.pre_norm,
        "final_norm": config.final_norm,
        # timm's 'avg' without fc_norm averages the normed patch tokens: exactly our mean pooling.
        "global_pool": {ours: theirs for theirs, ours in POOLINGS.items()}[config.pooling],
        "fc_norm": config.fc_norm,
        "norm_layer": norm_layer,
        "embed_norm_layer": norm_layer if config.patch_norm else None,
        "act_layer": TIMM_ACTIVATIONS[config.hidden_act],
        "mlp_layer": partial(GluMlp, gate_last=False) if gated else Mlp,
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
