"""The vit-custom Vision Transformer: patch embedding, pre-norm encoder and classification head."""

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import nn
from transformers import GradientCheckpointingLayer, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_vit_custom import ViTCustomConfig

NORMS = {"layer_norm": nn.LayerNorm, "rms_norm": nn.RMSNorm}


def build_norm(config: ViTCustomConfig, width: int | None = None) -> nn.Module:
    """The config's norm (`norm_type`, `layer_norm_eps`) over `width` channels (default hidden_size)."""
    return NORMS[config.norm_type](width or config.hidden_size, eps=config.layer_norm_eps)


def resample_position_embeddings(
    position_embeddings: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    antialias: bool = False,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Position embeddings (1, P + old_h * old_w, D) -> (1, P + new_h * new_w, D): the P prefix tokens' rows (class
    token, registers) kept, the patch rows resampled as an image, bicubic in float32 (timm's
    `resample_abs_pos_embed`; timm antialiases by default, which also changes the bicubic kernel when upsampling)."""
    prefix_pos = position_embeddings[:, :num_prefix_tokens]
    patch_pos = position_embeddings[:, num_prefix_tokens:]
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    # By target size (not scale factor) so the result has exactly the new grid and the op traces.
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    patch_pos = grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([prefix_pos, patch_pos], dim=1)


class ViTCustomEmbeddings(nn.Module):
    """Image (B, C, H, W) -> tokens (B, P + num_patches, hidden_size): patches and a linear projection (or the
    convolutional stem, `conv_stem_depth` > 0), the P prefix tokens (class token, then registers) in front, learned
    position embeddings (on the patches, and on the prefix with `prefix_position_embeddings`), dropout."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = p = config.patch_size
        self.num_channels = config.num_channels
        self.grid_size = config.image_size // p
        self.conv_stem_depth = depth = config.conv_stem_depth
        self.pixels_per_token = config.pixels_per_token
        if depth:
            widths = [config.num_channels, *config.stem_channels]
            layers = []
            for in_width, out_width, stride in zip(widths[:-1], widths[1:], config.stem_strides, strict=True):
                layers += [
                    nn.Conv2d(in_width, out_width, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(out_width),
                    nn.ReLU(),
                ]
            self.conv_stem = nn.Sequential(*layers, nn.Conv2d(widths[-1], config.hidden_size, 1))
        else:
            self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
            self.patch_proj = nn.Linear(p * p * config.num_channels, config.hidden_size, bias=not config.pre_norm)
        self.patch_norm = build_norm(config) if config.patch_norm else nn.Identity()
        width, registers = config.hidden_size, config.num_register_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if config.class_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, width)) if registers else None
        self.num_prefix_tokens = config.num_prefix_tokens
        # Prefix tokens with position embeddings: all of them, or none (timm's no_embed_class).
        self.num_embedded_prefix = self.num_prefix_tokens if config.prefix_position_embeddings else 0
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_embedded_prefix + self.grid_size**2, width))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid of an image: (height // patch, width // patch), or divided by each stem convolution's stride
        and rounded up."""
        if self.conv_stem_depth:
            stride = self.pixels_per_token
            # (h + s - 1) // s, not -(-h // s): exported graphs (ONNX) turn a negative floor division into truncation.
            return (height + stride - 1) // stride, (width + stride - 1) // stride
        return height // self.patch_size, width // self.patch_size

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Resample the patch position embeddings to the image's token grid, bicubic in float32."""
        new_grid = self.grid(height, width)
        # Checked first when exporting, so that torch.export does not keep the shortcut's size test as a guard that
        # would refuse the model's own size in a graph with dynamic height and width.
        if not torch.compiler.is_exporting() and new_grid == (self.grid_size, self.grid_size):
            return self.position_embeddings
        old_grid = (self.grid_size, self.grid_size)
        return resample_position_embeddings(
            self.position_embeddings, old_grid, new_grid, num_prefix_tokens=self.num_embedded_prefix
        )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"Expected pixel_values of shape (batch, {self.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if interpolate_pos_encoding:
            if not self.conv_stem_depth and (height % self.patch_size or width % self.patch_size):
                raise ValueError(
                    f"Expected an image size divisible by patch_size {self.patch_size}, got {height}x{width}"
                )
            position_embeddings = self.interpolate_pos_encoding(height, width)
        elif (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"Expected image size {self.image_size}x{self.image_size}, got {height}x{width} "
                "(pass interpolate_pos_encoding=True to run at another resolution)"
            )
        else:
            position_embeddings = self.position_embeddings
        if self.conv_stem_depth:
            patches = self.conv_stem(pixel_values).flatten(2).transpose(1, 2)  # (B, N, D)
        else:
            patches = self.patch_proj(self.to_patches(pixel_values))
        patches = self.patch_norm(patches)
        batch = patches.shape[0]
        prefix = [token.expand(batch, -1, -1) for token in (self.cls_token, self.register_tokens) if token is not None]
        if self.num_embedded_prefix == self.num_prefix_tokens:  # every token has a position embedding
            embeddings = torch.cat([*prefix, patches], dim=1) + position_embeddings
        else:
            embeddings = torch.cat([*prefix, patches + position_embeddings], dim=1)
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with explicit weights, in the signature of transformers' attention functions: query
    (B, heads, Nq, head_dim), key and value (B, heads, N, head_dim) -> output (B, Nq, heads, head_dim) and weights
    (B, heads, Nq, N), before dropout. `attention_mask` is always None: every token attends to every token."""
    attn_weights = (query * scaling) @ key.transpose(-2, -1)  # (B, heads, Nq, N)
    # Softmax in float32 (as the fused kernels do internally), so fp16 training cannot overflow here.
    attn_weights = attn_weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    attn_output = F.dropout(attn_weights, p=dropout, training=module.training) @ value
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class ViTCustomAttention(nn.Module):
    """Multi-head attention with one fused qkv projection: queries (B, Nq, D) -> (B, Nq, D).

    Self-attention by default. With `key_value_states` (B, N, D), the `hidden_states` are the queries only and keys
    and values come from `key_value_states`: the encoder uses it to compute the class token's row alone,
    `attn(x[:, :1], key_value_states=x)`, which equals the first row of `attn(x)` at a fraction of the cost.

    The attention itself is `config._attn_implementation` from transformers' attention interface (`"sdpa"`,
    `"eager"`, `"flex_attention"`, `"flash_attention_2"`...), chosen with `from_pretrained(attn_implementation=...)`
    or `model.set_attn_implementation(...)`. Attention maps (`output_attentions`) come from the eager path, whatever
    the implementation.
    """

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # read by the attention functions: every token attends to every token
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.q_norm = build_norm(config, self.head_dim) if config.qk_norm else nn.Identity()
        self.k_norm = build_norm(config, self.head_dim) if config.qk_norm else nn.Identity()
        self.norm = build_norm(config) if config.scale_attn_norm else nn.Identity()
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.proj_bias)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)
        self.config = config

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        key_value_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, Nq, D = hidden_states.shape
        if key_value_states is None:
            qkv = self.qkv(hidden_states).view(B, Nq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        else:
            if type(self.qkv) is nn.Linear:
                # The fused weight's first D rows project the queries, the other 2 D rows the keys and values.
                weight, bias = self.qkv.weight, self.qkv.bias
                q = F.linear(hidden_states, weight[:D], None if bias is None else bias[:D])
                kv = F.linear(key_value_states, weight[D:], None if bias is None else bias[D:])
            else:
                # A wrapped projection (LoRA adapters, a quantized layer) computes more than its `weight`: call it.
                q, kv = self.qkv(hidden_states)[..., :D], self.qkv(key_value_states)[..., D:]
            q = q.view(B, Nq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, Nq, head_dim)
            N = key_value_states.shape[1]
            k, v = kv.view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if output_attentions:
            attention_interface = eager_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        out, attn_weights = attention_interface(
            self, q, k, v, None, scaling=self.scaling, dropout=self.attention_dropout if self.training else 0.0
        )
        out = self.proj_drop(self.proj(self.norm(out.reshape(B, Nq, D))))  # (B, Nq, heads, head_dim) -> (B, Nq, D)
        return out, (attn_weights if output_attentions else None)


class ViTCustomMLP(nn.Module):
    """Two-layer MLP (B, N, D) -> (B, N, D) with the configured activation."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.proj_bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = build_norm(config, config.intermediate_size) if config.scale_mlp_norm else nn.Identity()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.proj_bias)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.norm(self.drop(self.act(self.fc1(x))))))


class ViTCustomGatedMLP(nn.Module):
    """Gated MLP (B, N, D) -> (B, N, D): fc1 gives a gate and a value (intermediate_size each, the gate first),
    act(gate) * value goes through fc2. SwiGLU with `hidden_act="silu"` (timm's `SwiGLUPacked` layout)."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.proj_bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = build_norm(config, config.intermediate_size) if config.scale_mlp_norm else nn.Identity()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.proj_bias)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # each (B, N, intermediate_size)
        return self.drop(self.fc2(self.norm(self.drop(self.act(gate) * value))))


MLPS = {"plain": ViTCustomMLP, "gated": ViTCustomGatedMLP}


class ViTCustomLayerScale(nn.Module):
    """LayerScale (B, N, D) -> (B, N, D): each channel scaled by a learned factor (`layer_scale_init_value` at
    first)."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.init_value = config.layer_scale_init_value
        self.gamma = nn.Parameter(torch.full((config.hidden_size,), float(self.init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ViTCustomDropPath(nn.Module):
    """Stochastic depth: zeroes the residual branch of whole samples with probability `drop_prob` while training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ViTCustomLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block (B, N, D) -> (B, N, D); with `class_token_only`, (B, N, D) -> (B, 1, D): the class
    token's row alone, attending to every token. Recomputed in the backward pass under activation checkpointing
    (`GradientCheckpointingLayer`: pass the tokens positionally, the flags by keyword)."""

    def __init__(self, config: ViTCustomConfig, drop_path_rate: float = 0.0):
        super().__init__()
        layer_scale = config.layer_scale_init_value is not None
        self.norm1 = build_norm(config)
        self.attn = ViTCustomAttention(config)
        self.ls1 = ViTCustomLayerScale(config) if layer_scale else nn.Identity()
        self.norm2 = build_norm(config)
        self.mlp = MLPS[config.mlp_type](config)
        self.ls2 = ViTCustomLayerScale(config) if layer_scale else nn.Identity()
        self.drop_path = ViTCustomDropPath(drop_path_rate)

    def forward(
        self, x: torch.Tensor, output_attentions: bool = False, class_token_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if class_token_only:
            normed = self.norm1(x)
            x = x[:, :1]
            attn_out, attn_weights = self.attn(normed[:, :1], output_attentions, key_value_states=normed)
        else:
            attn_out, attn_weights = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path(self.ls1(attn_out))
        del attn_out  # freed before the MLP, whose hidden layer is the peak of the layer's memory
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x, attn_weights


class ViTCustomEncoder(nn.Module):
    """Stack of `num_hidden_layers` blocks with linearly increasing drop-path; supports gradient checkpointing.

    (B, N, D) -> (B, N, D); with `class_token_only`, the last block computes the class token alone: (B, 1, D).
    """

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # 0 -> drop_path_rate, as timm
        self.layers = nn.ModuleList([ViTCustomLayer(config, rate) for rate in rates])
        # transformers sets it, and each layer's own flag, in activation_checkpointing_enable(); the layers checkpoint.
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        class_token_only: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layers):
            hidden_states, attn = layer(
                hidden_states,
                output_attentions=output_attentions,
                class_token_only=class_token_only and i == len(self.layers) - 1,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn,)
        return hidden_states, all_hidden_states, all_attentions


class ViTCustomClassTokenPool(nn.Module):
    """Tokens (B, P + N, D) -> the class token (B, D)."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


class ViTCustomMeanPool(nn.Module):
    """Tokens (B, P + N, D) -> the mean of the N patch tokens (B, D); the prefix tokens are left out."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        self.num_prefix_tokens = config.num_prefix_tokens

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, self.num_prefix_tokens :].mean(dim=1)


class ViTCustomAttentionPool(nn.Module):
    """Multihead attention pooling (SigLIP's "map" head; timm's `AttentionPoolLatent` and its keys): tokens
    (B, P + N, D) -> (B, D). A learned `latent` query attends to the N patch tokens (the prefix tokens are left
    out), then a residual MLP: x = proj(attention); x + mlp(norm(x))."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__()
        width = config.hidden_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.num_heads = config.num_attention_heads
        self.head_dim = width // config.num_attention_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, width))
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm = build_norm(config)
        self.mlp = ViTCustomMLP(config)

    def attention_weights(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The latent query's attention over the patch tokens: (B, P + N, D) -> (B, heads, N)."""
        q, k, _ = self._query_key_value(hidden_states)
        return ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]

    def _query_key_value(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        patches = hidden_states[:, self.num_prefix_tokens :]
        B, N, D = patches.shape
        q = self.q(self.latent).view(1, 1, self.num_heads, self.head_dim).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(patches).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # q (B, heads, 1, head_dim), k and v (B, heads, N, head_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self._query_key_value(hidden_states)
        x = self.proj(F.scaled_dot_product_attention(q, k, v).reshape(q.shape[0], -1))  # (B, D)
        return x + self.mlp(self.norm(x))


POOLERS = {"cls": ViTCustomClassTokenPool, "mean": ViTCustomMeanPool, "map": ViTCustomAttentionPool}


class ViTCustomPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the attributes transformers reads off every ViT-custom model."""

    config_class = ViTCustomConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTCustomEmbeddings", "ViTCustomLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialise every module type the config can create. transformers calls it at construction, from
        `init_weights()` (e.g. after `to_empty` on a model built on the meta device) and, in `from_pretrained`, for
        the weights the checkpoint lacks, with `torch.nn.init` guarded so that loaded tensors stay as loaded."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # The convolutional stem keeps PyTorch's default (Kaiming uniform), the initialisation it was trained with.
            module.reset_parameters()
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)
        elif isinstance(module, ViTCustomEmbeddings):
            for tokens in (module.position_embeddings, module.cls_token, module.register_tokens):
                if tokens is not None:
                    nn.init.trunc_normal_(tokens, std=std)
        elif isinstance(module, ViTCustomLayerScale):
            nn.init.constant_(module.gamma, module.init_value)
        elif isinstance(module, ViTCustomAttentionPool):
            nn.init.trunc_normal_(module.latent, std=module.latent.shape[-1] ** -0.5)  # timm's initialisation


class ViTCustomModel(ViTCustomPreTrainedModel):
    """Backbone: pixel_values (B, C, H, W) -> last_hidden_state (B, P + num_patches, D) (normed unless `fc_norm` or
    not `final_norm`; P prefix tokens: class token, registers) and pooler_output (B, D): the class token
    (`pooling="cls"`), the mean of the patch tokens (`"mean"`) or their attention pooling (`"map"`), then the
    `fc_norm` if the config has one."""

    def __init__(self, config: ViTCustomConfig):
        super().__init__(config)
        self.embeddings = ViTCustomEmbeddings(config)
        self.norm_pre = build_norm(config) if config.pre_norm else nn.Identity()
        self.encoder = ViTCustomEncoder(config)
        self.norm = build_norm(config) if config.final_norm and not config.fc_norm else nn.Identity()
        self.pooler = POOLERS[config.pooling](config)
        self.fc_norm = build_norm(config) if config.fc_norm else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding: the linear `patch_proj`, or the convolutional stem (`conv_stem_depth` > 0).

        `enable_input_require_grads()` hooks it, so that gradients reach trainable parameters after a frozen
        embedding (adapters) through checkpointed layers.
        """
        embeddings = self.embeddings
        return embeddings.conv_stem if embeddings.conv_stem_depth else embeddings.patch_proj

    def no_weight_decay(self) -> set[str]:
        """Parameters that must not be weight-decayed (timm's convention), besides every 1-D parameter."""
        names = ("position_embeddings", "cls_token", "register_tokens")
        return {f"embeddings.{name}" for name in names if getattr(self.embeddings, name) is not None}

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Tokens (B, P + N, D) -> pooled features (B, D), the input of a classification head."""
        return self.fc_norm(self.pooler(last_hidden_state))

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        last_hidden_state, all_hidden_states, all_attentions = self._encode(
            pixel_values, output_attentions, output_hidden_states, interpolate_pos_encoding
        )
        pooled_output = self.pool(last_hidden_state)
        if not return_dict:
            outputs = (last_hidden_state, pooled_output, all_hidden_states, all_attentions)
            return tuple(v for v in outputs if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

    def _encode(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        interpolate_pos_encoding: bool,
        class_token_only: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """Embeddings -> encoder -> final norm: (normed tokens, hidden states or None, attention maps or None).

        `class_token_only` is for callers that read the class token alone (the classification head): unless
        per-token outputs are asked for, the last layer then computes that token only and the normed tokens are
        (B, 1, D). Its row is the same as in the full computation, and that layer costs a fraction of the others.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        pixel_values = pixel_values.to(self.embeddings.position_embeddings.dtype)
        hidden_states = self.norm_pre(self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding))
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            hidden_states,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            class_token_only=class_token_only and not (output_attentions or output_hidden_states),
        )
        return self.norm(hidden_states), all_hidden_states, all_attentions


class ViTCustomForImageClassification(ViTCustomPreTrainedModel):
    """Backbone + linear head: pixel_values (B, C, H, W) -> logits (B, num_labels).

    The loss follows `config.problem_type`, as transformers' classifiers (see `compute_loss`): `"regression"` (mean
    squared error), `"single_label_classification"` (cross-entropy on class indices (B,), or on per-class
    probabilities (B, num_labels) as mixup / cutmix / label smoothing produce) or `"multi_label_classification"`
    (binary cross-entropy with logits on (B, num_labels) targets in [0, 1]). Unset, it is inferred from num_labels and
    the labels' dtype, without writing to the config: floating-point labels are soft targets, not multi-label ones.
    """

    def __init__(self, config: ViTCustomConfig):
        super().__init__(config)
        self.vit = ViTCustomModel(config)
        self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in self.vit.no_weight_decay()}

    @staticmethod
    def compute_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None) -> torch.Tensor:
        """The loss of `logits` (B, num_labels) for `labels` under `problem_type`, in float32.

        - `"regression"`: mean squared error; labels (B, num_labels), or (B,) with one label.
        - `"single_label_classification"`: cross-entropy on integer class indices (B,), or soft-target cross-entropy
          on floating-point per-class probabilities (B, num_labels).
        - `"multi_label_classification"`: binary cross-entropy with logits on targets (B, num_labels) in [0, 1].

        `problem_type=None` infers it as transformers does from num_labels and the labels' dtype, with one
        difference: one label -> regression; integer labels -> single-label; floating-point labels -> single-label
        with soft targets, where transformers would choose multi-label. Mixup, cutmix and label smoothing make float
        targets the usual case for training from scratch, and a guess from the values (rows that sum to 1) could
        switch losses between batches and would synchronise the device at every step. Multi-label training sets
        `config.problem_type = "multi_label_classification"`.
        """
        num_labels = logits.shape[-1]
        if problem_type is None:
            problem_type = "regression" if num_labels == 1 else "single_label_classification"
        labels = labels.to(logits.device)
        logits = logits.float()
        if problem_type == "regression":
            if labels.shape != logits.shape and not (num_labels == 1 and labels.shape == logits.shape[:1]):
                one_label = f" or ({logits.shape[0]},)" if num_labels == 1 else ""
                raise ValueError(
                    f"Expected regression labels of shape {tuple(logits.shape)} (batch, num_labels){one_label}, "
                    f"got {tuple(labels.shape)}"
                )
            return F.mse_loss(logits, labels.float().view_as(logits))
        if problem_type == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Expected multi-label targets of shape {tuple(logits.shape)} (batch, num_labels), "
                    f"got {tuple(labels.shape)}"
                )
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        if problem_type != "single_label_classification":
            raise ValueError(
                "problem_type: expected 'regression', 'single_label_classification' or "
                f"'multi_label_classification', got {problem_type!r}"
            )
        if labels.is_floating_point():
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Expected soft labels of shape {tuple(logits.shape)} (batch, num_labels), "
                    f"got {tuple(labels.shape)}"
                )
            return torch.sum(-labels.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"Expected integer labels of shape ({logits.shape[0]},) (batch,), got {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits, labels)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        last_hidden_state, all_hidden_states, all_attentions = self.vit._encode(
            pixel_values,
            output_attentions,
            output_hidden_states,
            interpolate_pos_encoding,
            class_token_only=self.config.pooling == "cls",
        )
        logits = self.head(self.vit.pool(last_hidden_state))
        loss = None if labels is None else self.compute_loss(logits, labels, self.config.problem_type)
        if not return_dict:
            return tuple(v for v in (loss, logits, all_hidden_states, all_attentions) if v is not None)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=all_hidden_states, attentions=all_attentions
        )
