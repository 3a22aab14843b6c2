"""The command lines of the training stages: ``torchrun`` for N processes on one node (it launches them), or,
inside a SLURM allocation, ``srun`` starting one ``torchrun`` per node that meet at a rendezvous on the first
node of ``$SLURM_JOB_NODELIST``. Plain argument lists (run without a shell) and their shell spelling (printed)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from ..errors import StampInputError

LAUNCHERS = ("local", "slurm")
RDZV_PORT = 29500
SLURM_JOB_ID = "$SLURM_JOB_ID"
# the first node of the allocation, as a shell expression (what the SLURM example and the printed lines use)
SLURM_HEAD_NODE = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'


@dataclass(frozen=True)
class Launch:
    launcher: str = "local"  # local: torchrun here; slurm: srun + torchrun on every node of the allocation
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the rendezvous (slurm default: the first node, port 29500)

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise StampInputError(f"unknown launcher {self.launcher!r}", hint=f"use one of {LAUNCHERS}")
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise StampInputError("nproc_per_node and nnodes must be >= 1")
        if self.launcher == "local" and self.nnodes > 1:
            raise StampInputError(f"{self.nnodes} nodes need a cluster launcher", None,
                                  hint="use --launcher slurm inside an allocation (examples/slurm/reproduce.sbatch)")


def head_node_endpoint(nodelist: str | None) -> str | None:
    """HOST:PORT on the first node of a SLURM node list (``scontrol show hostnames``), None outside SLURM."""
    import shutil
    import subprocess

    if not nodelist or shutil.which("scontrol") is None:
        return None
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False)
    hosts = out.stdout.split()
    return f"{hosts[0]}:{RDZV_PORT}" if hosts else None


def torchrun_argv(stage_args: list[str], launch: Launch, job_id: str = "stamp_st", python: str | None = None,
                  for_shell: bool = False) -> list[str]:
    """The argument list that runs ``stamp-st STAGE_ARGS`` on every process. ``for_shell``: spelled for a
    person or a batch script (``torchrun``, the head node as a shell expression)."""
    run = ["torchrun"] if for_shell else [python or sys.executable, "-m", "torch.distributed.run"]
    module = ["-m", "stamp_st", *stage_args]
    if launch.launcher == "local":
        return [*run, "--standalone", "--nnodes=1", f"--nproc-per-node={launch.nproc_per_node}", *module]
    endpoint = launch.rdzv_endpoint or (f"{SLURM_HEAD_NODE}:{RDZV_PORT}" if for_shell else None)
    if endpoint is None:
        raise StampInputError("--launcher slurm needs the rendezvous host", None,
                              hint="run inside a SLURM allocation (SLURM_JOB_NODELIST set) or give --rdzv-endpoint "
                                   "HOST:PORT")
    srun = ["srun", f"--nodes={launch.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    return [*srun, *run, f"--nnodes={launch.nnodes}", f"--nproc-per-node={launch.nproc_per_node}",
            f"--rdzv-id={job_id}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", *module]


def shell_line(argv: list[str]) -> str:
    """One shell line; the SLURM expressions (head node, job id) stay unquoted so that the shell expands them."""
    return " ".join(a if SLURM_HEAD_NODE in a or SLURM_JOB_ID in a else shlex.quote(a) for a in argv)
