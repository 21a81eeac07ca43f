"""Configuration of the vit-custom Vision Transformer (defaults: timm's `vit_base_patch16_224`)."""

import math

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
POOLINGS = ("cls", "mean", "map")
NORM_TYPES = ("layer_norm", "rms_norm")
MLP_TYPES = ("plain", "gated")

AUTO_MAP = {
    "AutoConfig": "configuration_vit_custom.ViTCustomConfig",
    "AutoModel": "modeling_vit_custom.ViTCustomModel",
    "AutoModelForImageClassification": "modeling_vit_custom.ViTCustomForImageClassification",
}


class ViTCustomConfig(PretrainedConfig):
    r"""
    Configuration of a [`ViTCustomModel`] / [`ViTCustomForImageClassification`]. The defaults are exactly timm's
    `vit_base_patch16_224` (86,567,656 parameters with the 1000-class head).

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Height and width of the input images.
        patch_size (`int`, *optional*, defaults to 16):
            Height and width of each square patch.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the token embeddings and of every encoder layer.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the MLP's hidden layer.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLP, a key of `transformers.activations.ACT2FN`: `"gelu"` is the exact erf GELU,
            `"gelu_pytorch_tanh"` its tanh approximation (SigLIP), `"quick_gelu"` x * sigmoid(1.702 x) (OpenAI CLIP),
            `"silu"` the gate of a SwiGLU MLP (`mlp_type="gated"`).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings, the attention output projection and the MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate of the last layer; it rises linearly from 0 over the layers, as in timm and DeiT.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the fused query/key/value projection has a bias.
        proj_bias (`bool`, *optional*, defaults to `True`):
            Whether the attention's output projection and the MLP's layers have biases (AIMv2: false).
        qk_norm (`bool`, *optional*, defaults to `False`):
            Normalise each head's queries and keys (`norm_type`, over head_dim) before attention.
        scale_attn_norm (`bool`, *optional*, defaults to `False`):
            A norm on the attention's output before its projection (BEiT-3's sub-LayerNorm).
        scale_mlp_norm (`bool`, *optional*, defaults to `False`):
            A norm on the MLP's hidden layer before fc2 (BEiT-3's sub-LayerNorm).
        layer_scale_init_value (`float`, *optional*):
            LayerScale (CaiT, DeiT III, DINOv2): each residual branch is scaled per channel by a learned vector
            initialised to this value. Unset: no scaling.
        mlp_type (`str`, *optional*, defaults to `"plain"`):
            `"plain"`: fc1 -> activation -> fc2. `"gated"`: fc1 gives a gate and a value of intermediate_size each,
            act(gate) * value -> fc2 (SwiGLU with `hidden_act="silu"`, as DINOv2-giant and AIMv2).
        norm_type (`str`, *optional*, defaults to `"layer_norm"`):
            Every norm of the model: `"layer_norm"` or `"rms_norm"` (AIMv2).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every norm (timm uses 1e-6, CLIP 1e-5; transformers' `google/vit-*` checkpoints use 1e-12).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation.
        class_token (`bool`, *optional*, defaults to `True`):
            Whether a learned class token leads the token sequence (SigLIP, AIMv2 and the `*_gap` models have none).
        num_register_tokens (`int`, *optional*, defaults to 0):
            Learned register tokens (Darcet et al. 2023) after the class token: they take part in attention and are
            left out of every pooling. The class token and the registers are the sequence's prefix tokens.
        prefix_position_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the prefix tokens have position embeddings (rows before the patches'). False is timm's
            `no_embed_class` (DeiT III, FlexiViT, DINOv2 with registers): only the patches are position-embedded.
        pre_norm (`bool`, *optional*, defaults to `False`):
            A norm on the embedded tokens before the first layer (`norm_pre`, CLIP); the patch projection then has
            no bias, as in CLIP and timm.
        patch_norm (`bool`, *optional*, defaults to `False`):
            A norm on the projected patches, before the prefix tokens and position embeddings join (AIMv2).
        final_norm (`bool`, *optional*, defaults to `True`):
            A norm after the last layer (on every token, or after pooling with `fc_norm`).
        fc_norm (`bool`, *optional*, defaults to `False`):
            The final norm moves after pooling (timm's `fc_norm`, the usual companion of mean pooling): the tokens
            come out of the encoder unnormed. Needs `final_norm`.
        pooling (`str`, *optional*, defaults to `"cls"`):
            What the head classifies: `"cls"` the class token, `"mean"` the mean of the patch tokens, `"map"`
            multihead attention pooling of the patch tokens by a learned query (SigLIP; timm's
            `AttentionPoolLatent`, with its own attention, norm and MLP).
        conv_stem_depth (`int`, *optional*, defaults to 0):
            0 cuts the image into patches and projects them linearly (ViT). N > 0 replaces that with N 3x3
            convolutions with BatchNorm and ReLU and a 1x1 projection to hidden_size: the convolutional stem of Xiao
            et al. 2021 ("Early Convolutions Help Transformers See Better"). A stride-s convolution divides the size by
            s rounding up, so the token grid is ceil(image_size / product of the strides), which must equal
            image_size // patch_size (e.g. 28 px, patch 7, three stride-2 convolutions: a 4x4 grid).
        conv_stem_channels (`list[int]`, *optional*):
            Output channels of each stem convolution; its length sets `conv_stem_depth`. Unset: hidden_size /
            2**(N-1-i) for convolution i of N (e.g. 32, 64, 128 for hidden_size 128 and depth 3).
        conv_stem_strides (`list[int]`, *optional*):
            Stride of each stem convolution, 1 or 2; its length sets `conv_stem_depth`. Unset: 2 for every one.
        num_labels / id2label / label2id:
            The classes (1000 unnamed ImageNet classes by default), handled by `PretrainedConfig`.
        problem_type (`str`, *optional*):
            The loss of [`ViTCustomForImageClassification`]: `"regression"`, `"single_label_classification"` or
            `"multi_label_classification"`. Unset, it is inferred from num_labels and the labels' dtype (see
            `ViTCustomForImageClassification.compute_loss`: floating-point labels are soft single-label targets).
    """

    model_type = "vit_custom"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        proj_bias: bool = True,
        qk_norm: bool = False,
        scale_attn_norm: bool = False,
        scale_mlp_norm: bool = False,
        layer_scale_init_value: float | None = None,
        mlp_type: str = "plain",
        norm_type: str = "layer_norm",
        class_token: bool = True,
        num_register_tokens: int = 0,
        prefix_position_embeddings: bool = True,
        pre_norm: bool = False,
        patch_norm: bool = False,
        final_norm: bool = True,
        fc_norm: bool = False,
        pooling: str = "cls",
        conv_stem_depth: int = 0,
        conv_stem_channels: list[int] | None = None,
        conv_stem_strides: list[int] | None = None,
        **kwargs,
    ):
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 1000
        # A saved folder holds both model files, so it can always name every Auto class it serves; save_pretrained
        # adds only the class being saved, and this keeps the other entry (AutoModel or ...ForImageClassification).
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.proj_bias = proj_bias
        self.qk_norm = qk_norm
        self.scale_attn_norm = scale_attn_norm
        self.scale_mlp_norm = scale_mlp_norm
        self.layer_scale_init_value = layer_scale_init_value
        self.mlp_type = mlp_type
        self.norm_type = norm_type
        self.class_token = class_token
        self.num_register_tokens = num_register_tokens
        self.prefix_position_embeddings = prefix_position_embeddings
        self.pre_norm = pre_norm
        self.patch_norm = patch_norm
        self.final_norm = final_norm
        self.fc_norm = fc_norm
        self.pooling = pooling
        self.conv_stem_depth = conv_stem_depth
        # Tuples become lists (as config.json gives them back); anything else is left for _validate to name.
        self.conv_stem_channels = (
            list(conv_stem_channels) if isinstance(conv_stem_channels, tuple) else conv_stem_channels
        )
        self.conv_stem_strides = list(conv_stem_strides) if isinstance(conv_stem_strides, tuple) else conv_stem_strides
        self._validate()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token (if any), then the registers."""
        return int(self.class_token) + self.num_register_tokens

    @property
    def stem_channels(self) -> list[int]:
        """Output channels of each convolution of the stem (empty without one)."""
        depth = self.conv_stem_depth
        return self.conv_stem_channels or [self.hidden_size // 2 ** (depth - 1 - i) for i in range(depth)]

    @property
    def stem_strides(self) -> list[int]:
        """Stride of each convolution of the stem (empty without one)."""
        return self.conv_stem_strides or [2] * self.conv_stem_depth

    @property
    def pixels_per_token(self) -> int:
        """Side of the square of pixels each token stands for: the patch, or the product of the stem's strides."""
        return math.prod(self.stem_strides) if self.conv_stem_depth else self.patch_size

    def _validate(self):
        for name in (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ViTCustomConfig.{name}: expected a positive integer, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"ViTCustomConfig.{name}: expected a probability in [0, 1), got {value!r}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError(
                "ViTCustomConfig.layer_norm_eps and initializer_range: expected positive numbers, "
                f"got {self.layer_norm_eps!r} and {self.initializer_range!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ViTCustomConfig.hidden_size: expected a multiple of num_attention_heads "
                f"({self.num_attention_heads}), got {self.hidden_size}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTCustomConfig.image_size: expected a multiple of patch_size ({self.patch_size}), "
                f"got {self.image_size}"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"ViTCustomConfig.hidden_act: expected one of {sorted(ACT2FN)}, got {self.hidden_act!r}")
        for name in (
            "qkv_bias",
            "proj_bias",
            "qk_norm",
            "scale_attn_norm",
            "scale_mlp_norm",
            "class_token",
            "prefix_position_embeddings",
            "pre_norm",
            "patch_norm",
            "final_norm",
            "fc_norm",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ViTCustomConfig.{name}: expected true or false, got {getattr(self, name)!r}")
        registers = self.num_register_tokens
        if isinstance(registers, bool) or not isinstance(registers, int) or registers < 0:
            raise ValueError(
                f"ViTCustomConfig.num_register_tokens: expected a non-negative integer, got {registers!r}"
            )
        scale = self.layer_scale_init_value
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(
                f"ViTCustomConfig.layer_scale_init_value: expected None or a positive number, got {scale!r}"
            )
        for name, allowed in (("mlp_type", MLP_TYPES), ("norm_type", NORM_TYPES), ("pooling", POOLINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ViTCustomConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.pooling == "cls" and not self.class_token:
            raise ValueError(
                "ViTCustomConfig.pooling: expected 'mean' or 'map' for a model without a class token "
                "(class_token=False), got 'cls'"
            )
        if self.fc_norm and not self.final_norm:
            raise ValueError(
                "ViTCustomConfig.fc_norm: expected false without a final norm (fc_norm moves the final norm after "
                "pooling; final_norm=False has none), got true"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"ViTCustomConfig.problem_type: expected None or one of {PROBLEM_TYPES}, got {self.problem_type!r}"
            )
        depth = self.conv_stem_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"ViTCustomConfig.conv_stem_depth: expected a non-negative integer, got {depth!r}")
        for name, allowed in (("conv_stem_channels", "positive integers"), ("conv_stem_strides", "1s and 2s")):
            values = getattr(self, name)
            if values is None:
                continue
            valid = (lambda v: v in (1, 2)) if name == "conv_stem_strides" else (lambda v: v > 0)
            if (
                not isinstance(values, list)
                or not values
                or any(isinstance(v, bool) or not isinstance(v, int) or not valid(v) for v in values)
            ):
                raise ValueError(f"ViTCustomConfig.{name}: expected a non-empty list of {allowed}, got {values!r}")
            if depth and len(values) != depth:
                raise ValueError(
                    f"ViTCustomConfig.{name}: expected one value per stem convolution (conv_stem_depth {depth}), "
                    f"got {len(values)}: {values!r}"
                )
            self.conv_stem_depth = depth = len(values)
        if depth and self.conv_stem_channels is None and self.hidden_size % 2 ** (depth - 1):
            raise ValueError(
                f"ViTCustomConfig.conv_stem_depth: expected a hidden_size divisible by {2 ** (depth - 1)} (without "
                f"conv_stem_channels, convolution i of {depth} has hidden_size / 2**({depth - 1}-i) channels), "
                f"got hidden_size {self.hidden_size}"
            )
        stride = self.pixels_per_token
        stem_grid = -(-self.image_size // stride)  # a stride-s convolution divides the size by s, rounding up
        if depth and stem_grid != self.image_size // self.patch_size:
            raise ValueError(
                f"ViTCustomConfig.conv_stem_depth: expected stem strides that make the image_size // patch_size = "
                f"{self.image_size // self.patch_size}-wide token grid, got strides {self.stem_strides}, a "
                f"{stem_grid}-wide grid for image_size {self.image_size}"
            )
