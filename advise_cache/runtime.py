"""Where and how a process computes: its device, its precision, its place in a torchrun job.

Training, evaluation, extraction and the figures all take `--device auto|cpu|cuda[:K]` and
most take `--precision auto|fp32|bf16|fp16`; this module turns those flags into a
`torch.device` and an autocast dtype the same way everywhere. Under torchrun, training joins
the process group here (`init_distributed`) and its ranks agree and sum through `Dist`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import AdviseCacheError


def free_memory(device: torch.device) -> int | None:
    """Memory a process may take on `device` (what a preload checks): free on a GPU; on the host
    MemAvailable (what the kernel can hand out without swapping, page cache included), not MemFree."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Processes of this job on this node: torchrun's LOCAL_WORLD_SIZE (1 without torchrun).
    torchrun does not pin its ranks to cores, so each sees every core of the node: whatever a
    process sizes by the cores (decode processes, reading threads, /dev/shm) it divides by this."""
    text = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        n = int(text)
    except ValueError:
        raise AdviseCacheError(f"LOCAL_WORLD_SIZE must be an integer, got {text!r}") from None
    if n < 1:
        raise AdviseCacheError(f"LOCAL_WORLD_SIZE must be >= 1, got {n}")
    return n


def cores_per_process() -> int:
    """This process's share of the node's usable cores (at least one)."""
    return max(1, usable_cores() // local_world_size())


def local_rank(cuda: bool) -> int:
    """LOCAL_RANK (0 without torchrun), checked: a non-negative integer, below LOCAL_WORLD_SIZE
    where that is set and, on CUDA, below the GPUs this node has, so that a bad launch is one
    line, not a CUDA error on some rank."""
    text = os.environ.get("LOCAL_RANK", "0")
    try:
        local = int(text)
    except ValueError:
        raise AdviseCacheError(f"LOCAL_RANK must be an integer, got {text!r}") from None
    if local < 0 or ("LOCAL_WORLD_SIZE" in os.environ and local >= local_world_size()):
        raise AdviseCacheError(f"LOCAL_RANK {local} is not within LOCAL_WORLD_SIZE {local_world_size()}")
    if cuda and local >= torch.cuda.device_count():
        raise AdviseCacheError(
            f"LOCAL_RANK {local}, but this node has {torch.cuda.device_count()} GPUs: launch at most that many "
            "processes per node (torchrun --nproc_per_node)"
        )
    return local


def resolve_device(device: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU. A device this machine
    does not have is one clear error, before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AdviseCacheError(f"--device {device!r}: expected auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no GPU is visible"
            raise AdviseCacheError(f"--device {device}: no CUDA device here ({build}); use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise AdviseCacheError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif dev.type != "cpu":
        raise AdviseCacheError(f"--device {device}: only cpu and cuda devices are supported")
    return dev


def make_current(device: torch.device) -> None:
    """Make a CUDA device this thread's current one, so that what defaults to the current device
    (streams, events, the context that pinned host memory is allocated in) is on it, not on
    cuda:0: every torchrun rank but the first, and `--device cuda:K`, need that."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on CUDA and fp32 elsewhere; other values pass unchanged."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype torch.autocast computes in for a resolved precision; None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


# -- distributed ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def backend_spec(device_type: str) -> str:
    """The process group's backends: NCCL for CUDA tensors, and gloo beside it so that CPU
    tensors and object collectives (errors, plans) work in a CUDA run too."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    cuda = resolve_device(device).type == "cuda"
    local = local_rank(cuda)
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
            dist.init_process_group(backend_spec("cuda"), device_id=torch.device("cuda", local))
        else:
            dist.init_process_group(backend_spec("cpu"))
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def close_distributed(d: Dist) -> None:
    """Leave the process group `init_distributed` joined, if any."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_agree(d: Dist, error: AdviseCacheError | None) -> None:
    """Raise on every rank the first error any rank found, so that a user error seen by one
    rank (a run folder already in use, say) ends the run everywhere instead of a hang."""
    if d.world == 1:
        if error is not None:
            raise error
        return
    found: list = [None] * d.world
    dist.all_gather_object(found, None if error is None else (type(error).__name__, str(error)))
    first = next((f for f in found if f is not None), None)
    if first is not None:
        if error is not None:
            raise error
        raise AdviseCacheError(first[1])


def sum_across(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks, where it lives (NCCL for CUDA tensors, gloo for CPU ones)."""
    if d.world > 1:
        dist.all_reduce(t)
    return t


def barrier(d: Dist) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if d.world > 1:
        dist.barrier()
