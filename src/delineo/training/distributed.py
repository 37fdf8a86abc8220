"""Several training processes, one model: PyTorch DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N -m delineo train --config X.yaml`` starts N copies of
``delineo train``; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address (``env://``), and :func:`setup` joins them into one process group: NCCL when the
training device is a GPU (process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``), gloo on CPUs. With
``WORLD_SIZE`` unset or 1 nothing happens and training is the single-process loop, unchanged.

What each process does (:func:`delineo.training.loop.train`):

* every process loads the training cases, builds the same network (same seed) and wraps it in
  ``DistributedDataParallel``: gradients are averaged over the processes at every step, so the
  weights stay identical and one step trains on ``N x batch_size`` patches;
* the processes draw different samples: a ``DistributedSampler`` (seeded by the config's seed and
  the epoch) deals each one its share of the training cases, and the random crops and
  augmentation are seeded per process (process 0 draws exactly what a single-process run draws);
* process 0 alone validates, writes the model folder, the learning curve and the checkpoint; the
  others wait for it at a barrier;
* on resume every process loads the same checkpoint (the one process 0 wrote).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from delineo.errors import ConfigError

#: how long the other processes wait for process 0 at a barrier (validation, saving); validating
#: a large 3D set on a CPU can take a while
BARRIER_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("DELINEO_DIST_TIMEOUT_MIN", "60")))


@dataclass
class Distributed:
    """Where this process stands in the group (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this module started the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as torchrun sets them; ``(0, 1, 0)`` outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, world, local


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun with more than one process.

    Returns this process's place and its device: with CUDA, ``cuda:LOCAL_RANK`` (a device index in
    the config is ignored then: each process takes its own GPU). A process group started by the
    caller (``torch.distributed.init_process_group`` before :func:`train`) is used as it is."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        info = Distributed(rank, world, local, dist.get_backend(), owns_group=False)
    else:
        rank, world, local = world_from_env()
        if world <= 1:
            return Distributed(), device
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise ConfigError(
                    f"process LOCAL_RANK={local} has no GPU of its own ({torch.cuda.device_count()} visible): "
                    "start at most one process per GPU (torchrun --nproc_per_node)"
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
        info = Distributed(rank, world, local, backend, owns_group=True)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def check_weighting(weighting: torch.nn.Module, info: Distributed) -> None:
    """Sample-weighting strategies that learn parameters or remember samples would drift apart
    in separate processes (each sees only its own samples): refused with several processes."""
    if not info.enabled:
        return
    if any(True for _ in weighting.parameters()) or getattr(weighting, "tracks_samples", False):
        raise ConfigError(
            f"training.weighting {type(weighting).__name__} keeps learned or per-sample state and is not supported "
            f"with {info.world_size} processes yet: train it in one process (without torchrun)"
        )


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the random crops and augmentation for ``epoch`` in process ``rank``: a function of
    (seed, epoch) as in a single-process run (rank 0 gets exactly that one), shifted per process."""
    base = seed * 100_003 + epoch
    return base if rank == 0 else (base + rank * 1_000_003) % (2**32)
