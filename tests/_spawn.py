"""Run a function in N local processes joined in a gloo process group, with a deadline."""
from __future__ import annotations

import os
import socket
import time

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_group() -> None:
    """Leave the process group so that the process exits cleanly; see distributed.teardown."""
    from resnet_fast.training import distributed

    distributed.teardown()


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    import torch

    torch.set_num_threads(1)  # N processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    fn(rank, world, *args)


def run(fn, *args, world: int = 2, timeout: float = 240.0) -> None:
    """``fn(rank, world, *args)`` in ``world`` spawned processes whose environment is torchrun's.

    ``fn`` joins the group itself (``dist.init_process_group("gloo")`` reads the
    environment). Raises if a process fails or the deadline passes (the processes are killed).
    """
    context = mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{world} processes did not finish within {timeout:.0f} s")
