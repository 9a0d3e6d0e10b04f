"""What the processes of one run say to each other (`Dist`, sums, objects, the stop flag, barriers, DDP
wrapping); every helper is a no-op for a single process (`Dist()`). NCCL on CUDA, gloo on the CPU; the stop
flag and Python objects always travel over gloo, so the per-step check never waits for a GPU. The launcher that
starts the processes is `distributed.py`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run; `Dist()` is a single process and every helper below a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # gloo group for the stop flag and objects (None: the default group, already gloo)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun set up; returns where this rank stands and its device name."""
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    group = dist.new_group(backend="gloo") if cuda else None
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, group), device_name


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's `obj` on every rank (pickled among the run's own processes, over gloo)."""
    if not dist.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=0, group=dist.group)
    return box[0]


def gather_objects(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj, group=dist.group)
    return out


def all_sum(tensor, dist: Dist):
    """The sum over ranks of `tensor` (a new tensor; the input is left alone)."""
    if not dist.enabled:
        return tensor
    import torch.distributed as tdist

    total = tensor.clone()
    tdist.all_reduce(total)
    return total


def agree_stop(signum: int | None, dist: Dist) -> int | None:
    """The signal any rank has received (the largest number if several), on every rank: all stop at one step."""
    if not dist.enabled:
        return signum
    import torch
    import torch.distributed as tdist

    flag = torch.tensor([signum or 0])
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=dist.group)
    return int(flag.item()) or None


def barrier(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier(group=dist.group)


def wrap_model(model, device, dist: Dist):
    """DistributedDataParallel around the model (SyncBatchNorm first where it has batch norm, on GPUs: PyTorch's
    SyncBatchNorm has no CPU kernel, so on the CPU each rank normalises over its own slice of the batch)."""
    if not dist.enabled:
        return model
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def lost_peer(err: BaseException, dist: Dist) -> bool:
    """Whether a failed collective means another process died (the parent reports that process's own error)."""
    import torch.distributed as tdist

    words = ("gloo", "NCCL", "Connection")
    return dist.enabled and (isinstance(err, tdist.DistError) or any(word in str(err) for word in words))


def shutdown(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
