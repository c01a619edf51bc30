"""Where the work runs: the device, the CPUs a process may use, torchrun (ranks, BatchNorm over the global batch) and
bf16 autocast. Shared by every script; nothing here is a stage of the pipeline."""
import contextlib
import dataclasses
import os

import torch
import torch.nn.functional as F

from helpers.common import UserError


def available_cpus():
    """The CPUs this process may run on (a container's or taskset's limit), not the machine's count: more loader
    processes than these only compete for them (and torch warns about it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(name="auto"):
    """'auto' -> cuda if available, else mps, else cpu. Anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


@dataclasses.dataclass
class Dist:
    """Where this process sits in a torchrun job (world_size 1 when run plainly)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def setup_distributed(device_name="auto"):
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1).

    NCCL on CUDA (one GPU per local rank), gloo on CPU so tests can run two processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if world_size > 1:
        import torch.distributed as dist
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_LOCAL_BATCH_NORM = F.batch_norm


def sync_batchnorm(model, dist):
    """BatchNorm over the global batch under torchrun, so N processes compute what one computes (the authors
    trained with synced BN; TinyViT has 27 BatchNorm layers). GPUs: timm's conversion to SyncBatchNorm (which
    also keeps BatchNormAct2d's activation). CPU (gloo; torch's SyncBatchNorm runs on GPUs only): while the model
    runs, F.batch_norm in training mode takes its statistics from a differentiable all_reduce."""
    if not dist.enabled:
        return model
    if dist.device.type == "cuda":
        import timm.layers
        return timm.layers.convert_sync_batchnorm(model)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.register_forward_pre_hook(lambda *_: setattr(F, "batch_norm", _global_batch_norm))
        model.register_forward_hook(lambda *_: setattr(F, "batch_norm", _LOCAL_BATCH_NORM))
    return model


def _global_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5):
    """F.batch_norm with the mean and variance of the batch across all ranks (training mode only)."""
    if not training:
        return _LOCAL_BATCH_NORM(x, running_mean, running_var, weight, bias, training, momentum, eps)
    import torch.distributed.nn
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() // c])])  # (2C + 1,)
    stats = torch.distributed.nn.all_reduce(stats)  # summed over ranks; gradients flow back to every rank
    n = stats[-1]
    mean = stats[:c] / n  # (C,)
    var = stats[c:2 * c] / n - mean * mean  # biased, as the normalisation uses
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))  # unbiased, as torch keeps it
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    return y * weight.view(shape) + bias.view(shape) if weight is not None else y


def autocast(device, enabled=True):
    """bf16 autocast on CUDA (the GPU path); a no-op on CPU, where we train and test in fp32.

    ZSD_CPU_BF16=1 in the environment (read at each call) turns on bf16 autocast on CPU too, so tests and
    users without a GPU can see what bf16 does to the numbers (e.g. logits that tie); off by default.
    """
    if enabled and autocast_dtype(device) == "bf16 autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_dtype(device):
    """What `autocast(device)` runs the models in: 'bf16 autocast' or 'fp32' (for start-up lines)."""
    cpu_bf16 = os.environ.get("ZSD_CPU_BF16", "0").lower() in ("1", "true", "yes", "on")
    return "bf16 autocast" if device.type == "cuda" or (device.type == "cpu" and cpu_bf16) else "fp32"
