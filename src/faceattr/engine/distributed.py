"""Distributed data parallel training under ``torchrun``: one process per device.

``torchrun --nproc_per_node=N -m faceattr train ...`` (or ``faceattr train --nproc N``, which
starts torchrun's agent for you) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in each process's environment; :func:`init` reads them and joins the
process group (NCCL on CUDA, gloo on the CPU), with a timeout on every collective so a rank
that dies cannot leave the others waiting forever (torchrun's agent also stops the job when
one process fails).

What the engine does with it (see :mod:`faceattr.engine.fit`): every epoch all ranks draw the
same seeded permutation of the training rows and rank ``r`` trains on ``perm[r::N]`` (so
resume stays exact, with the same or another number of processes); gradients are averaged by
``DistributedDataParallel``; validation rows are split the same way and the predictions
gathered, so every rank computes the same metrics on the whole split; only rank 0 writes files
and reports progress. ``--batch-size`` is per process: the global batch is N times it, and the
learning rate is not scaled (set it for the global batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

TIMEOUT_ENV = "FACEATTR_DIST_TIMEOUT"  # seconds a collective may wait (default 1800)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of ``rows``: every ``world_size``-th one, from its rank."""
        return rows[self.rank :: self.world_size]


_current: list[Dist] = []


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (once per process); ``Dist()`` otherwise."""
    if _current:
        return _current[0]
    if not launched():
        _current.append(Dist())
        return _current[0]
    import torch.distributed as dist

    ctx = Dist(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    cuda = torch.cuda.is_available() and not (device or "auto").startswith(("cpu", "mps"))
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    _current.append(ctx)
    return ctx


def device_for(ctx: Dist, requested: str) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when distributed on CUDA, else ``--device``."""
    from faceattr.utils import resolve_device

    device = resolve_device(requested)
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(ctx: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(ctx: Dist, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def sync_buffers(ctx: Dist, module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP keeps the parameters equal on all ranks, but each rank updates its running statistics
    on its own batches after DDP's broadcast; syncing before validation makes every rank
    validate (and rank 0 save) one and the same model.
    """
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap(ctx: Dist, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed (it averages the gradients)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def launch(nproc: int, args: list[str]) -> list[int]:
    """Run ``python -m faceattr ARGS`` in ``nproc`` processes on this machine, as ``torchrun
    --standalone --nproc_per_node=N`` would (``faceattr train --nproc N``), through torchrun's
    own elastic agent; the ranks that failed (each printed its own error), or ``[]``."""
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Threads per process that together match the cores (torchrun would set 1 and say so).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, like --standalone
        max_restarts=0,
    )
    import logging

    # The agent logs each failure with its own stack; faceattr says which ranks failed.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "faceattr", *args)
    except ChildFailedError as exc:
        return sorted(int(rank) for rank in exc.failures)
    return []
