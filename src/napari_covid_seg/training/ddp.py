"""Distributed data parallel helpers (``torchrun`` or an explicit in-process init).

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_env`
starts the process group (NCCL on CUDA, gloo on CPU). Tests start worlds of
one and two processes on CPU with :func:`init_process_group` and a free
localhost port.

A collective that one rank never reaches waits forever, so every rank must run
the same number of steps: :func:`shard` pads the epoch's sample order to a
multiple of the world size (like ``DistributedSampler``) before dealing it
out, and :func:`split_batches` applies the same batching rule on every rank.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_process_group(
    backend: str = "gloo",
    *,
    rank: int = 0,
    world_size: int = 1,
    port: int | None = None,
    timeout_s: float | None = None,
) -> DistInfo:
    """Start a process group on ``tcp://127.0.0.1:<port>`` (tests, single machine).

    ``timeout_s`` bounds every collective: a rank left waiting raises instead of hanging.
    """
    port = port or free_port()
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = _dt.timedelta(seconds=float(timeout_s))
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        **kwargs,
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=rank)


def init_from_env(device_type: str) -> DistInfo:
    """Join the torchrun job described by the environment (no-op if already joined)."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    """The info of an already initialised group, else the single-process default."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(
            rank=rank,
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        )
    return DistInfo()


def shard(order: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """This rank's share of ``order``: padded by wrapping around to a multiple of
    ``world_size`` (as ``DistributedSampler`` does), then every ``world_size``-th item.

    Every rank gets exactly ``ceil(len(order) / world_size)`` items, so every rank
    runs the same number of steps. Works on lists, numpy arrays and tensors.
    """
    n = len(order)
    if world_size <= 1 or n == 0:
        return order
    total = -(-n // world_size) * world_size
    mine = [i % n for i in range(rank, total, world_size)]
    if isinstance(order, torch.Tensor):
        return order[torch.as_tensor(mine, dtype=torch.long)]
    if hasattr(order, "dtype"):  # numpy
        return order[mine]
    return [order[i] for i in mine]


def n_batches(n: int, batch_size: int) -> int:
    """Batches :func:`split_batches` makes of ``n`` items."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)) if n else 0


def split_batches(indices: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """Consecutive batches of ``batch_size``; a last batch of one is dropped when
    others exist (BatchNorm cannot train on one sample). The same rule on every
    rank, with equal shards, gives every rank the same number of steps.
    """
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches = batches[:-1]
    return batches


def broadcast_object(obj: T, info: DistInfo, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not info.enabled or info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last training
    step every rank holds statistics of its own last batch; this makes
    validation and the saved state identical on all ranks.
    """
    if not info.enabled or info.world_size == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a list of one element when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (a stop request must end all ranks)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled and info.world_size > 1:
        dist.barrier()
