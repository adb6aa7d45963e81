"""Data parallelism through torch DistributedDataParallel, launched by torchrun.

One global batch is split across ranks (rank r takes rows r, r + world, ...), gradients are
averaged by DDP, so a run on N processes follows the single-process trajectory for the same
global batch. Rank 0 alone scores val (with the study's one scoring function, so the numbers equal a
single process's) and writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank, world size, and whether it writes outputs."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: torch.Tensor | list) -> torch.Tensor | list:
        """This rank's rows of a global batch (or index list)."""
        return rows[self.rank :: self.world]


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher) set up this process as one rank of a job."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes (nccl on GPU, gloo on CPU), or run alone."""
    if not launched_by_torchrun():
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return Context(dist.get_rank(), dist.get_world_size())


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


def finish(ctx: Context) -> None:
    """Leave the process group together: rank 0 may still be writing when the others end, and
    a rank that exits without this can fail the job in its teardown."""
    if ctx.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
