"""FSDP2 through accelerate, also on CPU processes; a module sharded like the model (the EMA copy), checkpointed
shard by shard; what each process holds."""

import accelerate
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    fsdp2_prepare_model,
    load_fsdp_model,
    parse_flag_from_env,
    save_fsdp_model,
)
from packaging.specifiers import SpecifierSet
from torch import nn
from torch.distributed.tensor import DTensor

# The accelerate releases `enable_fsdp_on_cpu` is tested with: it sets attributes of accelerate's state that are not
# public API, which a later release may read elsewhere or rename.
FSDP_ON_CPU_ACCELERATE = SpecifierSet(">=1.15,<1.17")


def enable_fsdp_on_cpu(accelerator: Accelerator) -> bool:
    """Makes an FSDP launch on CPU processes shard; returns whether it did.

    accelerate (1.15, 1.16) gives its state the FSDP type only on GPU-like devices: launched with an FSDP config (or
    --use_fsdp) under ACCELERATE_USE_CPU=1 it keeps MULTI_CPU, and `prepare` wraps the model in DDP, sharding
    nothing. Here the state gets the type and the plugin (read from the launch's FSDP_* settings) it gets on GPUs, so
    that `prepare` applies `fully_shard` (gloo carries the collectives), `save_state` writes sharded checkpoints and
    `get_state_dict` gathers. Call it right after building the Accelerator, before `prepare`."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU or not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return False
    check_fsdp_on_cpu_accelerate(accelerate.__version__)
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"fsdp_version: FSDP on CPU processes expected 2 (FSDP2's fully_shard), got {plugin.fsdp_version}"
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # As AcceleratorState does for GPUs: both states say FSDP.
    accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    if accelerator.distributed_type != DistributedType.FSDP or not accelerator.is_fsdp2:
        raise RuntimeError(
            f"FSDP on CPU processes: accelerate {accelerate.__version__} did not take the FSDP2 state it was given "
            f"(distributed_type {accelerator.distributed_type}); the model would train unsharded"
        )
    return True


def check_fsdp_on_cpu_accelerate(version: str) -> None:
    """Refuses FSDP on CPU processes with an accelerate release it is not tested with (FSDP_ON_CPU_ACCELERATE)."""
    if version not in FSDP_ON_CPU_ACCELERATE:
        raise RuntimeError(
            f"FSDP on CPU processes: expected accelerate{FSDP_ON_CPU_ACCELERATE}, the releases whose internal state "
            f"it is tested with, got accelerate {version}; install one of those, or train on GPUs or with DDP"
        )


def check_sharded(model: nn.Module) -> None:
    """Refuses a prepared FSDP model that holds no sharded parameter: `prepare` did not apply `fully_shard`."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        raise RuntimeError(
            "FSDP: expected the prepared model's parameters sharded (DTensors), got none; accelerate's prepare did "
            "not apply fully_shard, and the model would train unsharded on every process"
        )


def check_fsdp_arguments(streaming: bool, model: str, channels_last: bool, optim: str):
    """Refuses what FSDP cannot run here, before any data is read: a stream (its validation shards are uneven, and
    under FSDP every forward pass is a collective that all processes must run), timm's model (its blocks are not
    the config's `ViTCustomLayer` units, and its saved folder would hold a process's shards), channels-last
    weights (fully_shard splits every parameter along its first dimension, which is not laid out contiguously in
    channels-last memory; untested) and Muon (it orthogonalises each whole matrix, of which a process holds rows)."""
    if streaming:
        raise ValueError("--streaming with FSDP: expected a table, got a stream, whose evaluation shards are uneven")
    if model != "vit_custom":
        raise ValueError(f"--model with FSDP: expected 'vit_custom', got {model!r}; train timm's model with DDP")
    if channels_last:
        raise ValueError("--channels_last with FSDP: expected it off, got on; shard the model in its default layout")
    if optim != "adamw":
        raise ValueError(f"--optim with FSDP: expected adamw, got {optim!r}; Muon needs each whole matrix, use DDP")


def shard_like_model(accelerator: Accelerator, module: nn.Module) -> nn.Module:
    """`module`, a copy of the model made before `prepare` (the EMA's), sharded as `prepare` sharded the model: the
    same units on the same mesh, so each process's shard of every tensor lines up with its shard of the model's and
    an update between them needs no communication. With `fsdp_cpu_ram_efficient_loading` process 0's values are
    broadcast, as they are for the model."""
    return fsdp2_prepare_model(accelerator, module)


def checkpoint_sharded(accelerator: Accelerator, module: nn.Module, index: int):
    """Has `save_state` / `load_state` write and read the sharded `module` as they do the model (each process its
    shards, torch.distributed.checkpoint), under pytorch_model_fsdp_{index}; `index` must not be a prepared model's."""

    def save(models, weights, output_dir):
        save_fsdp_model(accelerator.state.fsdp_plugin, accelerator, module, output_dir, index)

    def load(models, input_dir):
        load_fsdp_model(accelerator.state.fsdp_plugin, accelerator, module, input_dir, index)

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def local_parameter_count(model: nn.Module) -> int:
    """Parameters this process holds: its shards of sharded ones (DTensors), all of the others."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
