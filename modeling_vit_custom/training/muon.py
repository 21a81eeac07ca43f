"""Muon (Keller Jordan et al. 2024) for the encoder's weight matrices and AdamW for everything else, in one optimizer
whose state and param groups are torch's usual ones (so `accelerator.save_state` / `load_state` and the schedule's
LambdaLR handle it like AdamW).

torch's `torch.optim.Muon` and timm's `timm.optim.Muon` both run the Newton-Schulz iterations in bfloat16, which a
CPU without bfloat16 hardware (the AVX2 machines the quickstart targets) emulates: on AVX2 code the quickstart's
training step, Muon then stepping its stem's convolutions too, ran at 0.13-0.14x AdamW's with either and at 0.73x
with float32 iterations (docs/quickstart.md). Here they run in float32 on CPU, and in bfloat16 on GPU as those
implementations do (not run on a GPU here)."""

import torch
from torch import nn
from torch.optim.adamw import adamw

# The quintic iteration's coefficients, Keller Jordan's (torch.optim.Muon's and timm's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(matrix: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """Newton-Schulz iterations from `matrix` (= U S V^T) towards U V^T: the result's singular values lie roughly in
    0.7-1.2 (the coefficients trade exactness for speed). float32 on CPU, bfloat16 on GPU."""
    a, b, c = NS_COEFFICIENTS
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.mT if tall else matrix
    x = x.to(torch.bfloat16 if x.is_cuda else torch.float32)
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def hidden_weights(model: nn.Module) -> set[int]:
    """ids of the weights Muon steps: those of the linear layers and convolutions between the input embedding and the
    classifier, as Keller Jordan's Muon leaves the embedding and the head to AdamW. The input embedding is the model's
    `get_input_embeddings()`, the patch projection or the whole convolutional stem (ours), else its first layer (timm's
    models); the classifier is the last layer."""
    layers = [module for module in model.modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else layers[0]
    left_to_adamw = {id(param) for param in embedding.parameters()} | {id(layers[-1].weight)}
    weights = [layer.weight for layer in layers if layer.weight.requires_grad]
    return {id(weight) for weight in weights if id(weight) not in left_to_adamw}


def split_for_muon(model: nn.Module, groups: list[dict]) -> list[dict]:
    """Each param group split in two, the same settings for both: its hidden weights (`use_muon`) and the rest."""
    hidden = hidden_weights(model)
    split = []
    for group in groups:
        for use_muon in (True, False):
            params = [p for p in group["params"] if (id(p) in hidden) == use_muon]
            if params:
                split.append({**group, "params": params, "use_muon": use_muon})
    return split


class MuonWithAdamW(torch.optim.Optimizer):
    """
    For a group with `use_muon`: each matrix's Nesterov momentum, orthogonalised, stepped at the group's rate x
    `muon_lr_scale` x 0.2 x sqrt(max(rows, columns)) (Moonshot's scaling, "Muon is Scalable for LLM Training": the
    update's RMS then matches AdamW's), with decoupled weight decay at the same rate; a convolution's weight is the
    (out, in x kernel) matrix. For the other groups: AdamW (torch's functional `adamw`, fused as `--optim adamw` is).
    Each group's `lr` is the one the schedule sets, as for AdamW.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.95, muon_lr_scale: float = 1.0):  # fmt: skip
        # `fused` also has load_state_dict put AdamW's step counts on the parameters' device, as the kernel needs.
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        muon_lr_scale=muon_lr_scale, use_muon=False, fused=True)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon_step(group, params)
            elif params:
                self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]):
        lr, momentum = group["lr"] * group["muon_lr_scale"], group["momentum"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.lerp_(p.grad, 1 - momentum)
            update = orthogonalize(p.grad.lerp(buffer, momentum).reshape(len(p), -1))
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update.reshape(p.shape).to(p.dtype), alpha=-lr * 0.2 * max(update.shape) ** 0.5)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]):
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        adamw(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=group["fused"],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
