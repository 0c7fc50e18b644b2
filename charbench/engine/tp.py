"""Tensor parallelism: process group, batch broadcast, rendezvous on loopback.

Rank 0 is the engine's process. It either spawns ``tp - 1`` worker processes itself
(:func:`charbench.engine.tp_worker.spawn_workers`, the default) or runs as rank 0 of a
``torchrun`` launch (:func:`torchrun_env` detects one; the other ranks run
``ModelRunner.serve_forever`` instead of an engine). Each rank holds one Megatron-style shard of the model and of the KV cache.

Per iteration rank 0 broadcasts the batch (the chunks as one int64 tensor over a gloo
group, so NCCL runs need no host-device copies for control messages); every rank runs
its shard; the row-parallel projections all-reduce over the tensor-parallel group (NCCL on
GPU, gloo on CPU); rank 0 alone computes logits. Shutdown is a broadcast command.

Example (what ``make_runner`` does for ``tp=2``)::

    procs = spawn_workers(engine_cfg, world_size=2, port=port, runner_cls=ModelRunner)   # tp_worker
    group = TPGroup.init(rank=0, world_size=2, init_method=f"tcp://127.0.0.1:{port}",
                         device=torch.device("cpu"))
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from charbench.errors import ConfigError, DeviceError

CMD_SHUTDOWN = 0
CMD_FORWARD = 1
COLLECTIVE_TIMEOUT_S = 600.0
"""Process-group timeout: a collective waiting longer raises instead of hanging."""


LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def loopback_ifname() -> str | None:
    """Name of the loopback network interface (``lo`` on Linux), None when not found."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    if "lo" in names:
        return "lo"
    return next((n for n in names if n.startswith("lo")), None)


def _loopback_port(init_method: str) -> int | None:
    """The port of a ``tcp://127.0.0.1:PORT`` rendezvous (spawned workers), else None."""
    prefix = f"tcp://{LOOPBACK}:"
    if init_method.startswith(prefix) and init_method[len(prefix):].isdigit():
        return int(init_method[len(prefix):])
    return None


def loopback_store(rank: int, world_size: int, port: int, timeout: datetime.timedelta) -> Any:
    """The rendezvous store of a single-machine group, listening on 127.0.0.1 only.

    ``init_method="tcp://127.0.0.1:PORT"`` would make torch's TCPStore listen on every
    interface; rank 0 instead hands it a socket bound to loopback. The other ranks connect.
    The collectives' own sockets are kept on loopback too (``GLOO_SOCKET_IFNAME`` and
    ``NCCL_SOCKET_IFNAME``, unless the user set them).
    """
    ifname = loopback_ifname()
    if ifname is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", ifname)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", ifname)
    if rank != 0:
        return dist.TCPStore(LOOPBACK, port, world_size, False, timeout=timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(max(128, world_size))
    except OSError as exc:
        sock.close()
        raise DeviceError(f"--tp {world_size}: cannot listen on {LOOPBACK}:{port} for the worker rendezvous ({exc})") from exc
    # the store owns the listening socket from here on
    return dist.TCPStore(LOOPBACK, port, world_size, True, timeout=timeout, master_listen_fd=sock.detach())


def rank_device(base: str, rank: int) -> torch.device:
    """Device of ``rank``: CPU for every rank, or ``cuda:(i + rank)`` for base ``cuda:i``."""
    dev = torch.device(base)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", (dev.index or 0) + rank)


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when launched by torchrun with world size > 1."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


@dataclass
class ChunkMsg:
    """A chunk as a worker receives it (the fields ``ModelRunner.forward`` reads)."""

    seq_id: int
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    need_logits: bool


def encode_chunks(chunks: Sequence[Any]) -> torch.Tensor:
    """Chunks -> int64 ``[n, (seq_id, start, n_tok, n_blk, need_logits, tokens..., blocks...)*]``."""
    flat: list[int] = [len(chunks)]
    for c in chunks:
        flat += [c.seq_id, c.start_pos, len(c.token_ids), len(c.block_table), int(c.need_logits)]
        flat += list(c.token_ids)
        flat += list(c.block_table)
    return torch.tensor(flat, dtype=torch.long)


def decode_chunks(t: torch.Tensor) -> list[ChunkMsg]:
    """Inverse of :func:`encode_chunks`."""
    flat = t.tolist()
    n, o, out = flat[0], 1, []
    for _ in range(n):
        seq_id, start, nt, nb, need = flat[o : o + 5]
        o += 5
        toks = flat[o : o + nt]
        o += nt
        blocks = flat[o : o + nb]
        o += nb
        out.append(ChunkMsg(seq_id, toks, start, blocks, bool(need)))
    return out


class TPGroup:
    """This rank's view of the tensor-parallel group.

    Attributes:
        rank: this rank.
        world_size: the tp degree.
        device: this rank's device.
        owns_default_group: True when this object created the default process group (and
            destroys it in :meth:`destroy`).
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, owns: bool) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.owns_default_group = owns
        # control messages travel over gloo even when the tensors use NCCL
        self.ctrl = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._header = torch.zeros(2, dtype=torch.long)

    @classmethod
    def init(
        cls, rank: int, world_size: int, init_method: str, device: torch.device
    ) -> TPGroup:
        """Create the default process group (gloo on CPU, NCCL on CUDA) and wrap it."""
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = False
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {}
            if device.type == "cuda":
                kwargs["device_id"] = device
            timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
            port = _loopback_port(init_method)
            if port is not None:  # spawned workers: nothing listens beyond loopback
                kwargs["store"] = loopback_store(rank, world_size, port, timeout)
            else:  # torchrun's env:// (MASTER_ADDR is the user's choice)
                kwargs["init_method"] = init_method
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout, **kwargs)
            owns = True
        elif dist.get_world_size() != world_size:
            raise ConfigError(
                f"--tp {world_size}: a process group of size {dist.get_world_size()} already exists"
            )
        return cls(rank, world_size, device, owns)

    def all_reduce(self, t: torch.Tensor) -> None:
        """In-place sum across ranks."""
        dist.all_reduce(t)

    def broadcast_chunks(self, chunks: Sequence[Any] | None) -> list[ChunkMsg] | None:
        """Rank 0 sends ``chunks`` (None = shutdown); other ranks receive them.

        Returns:
            On workers the received chunks, or None for shutdown; on rank 0 None.
        """
        if self.rank == 0:
            payload = encode_chunks(chunks) if chunks is not None else torch.zeros(0, dtype=torch.long)
            self._header[0] = CMD_FORWARD if chunks is not None else CMD_SHUTDOWN
            self._header[1] = payload.numel()
            dist.broadcast(self._header, src=0, group=self.ctrl)
            if payload.numel():
                dist.broadcast(payload, src=0, group=self.ctrl)
            return None
        dist.broadcast(self._header, src=0, group=self.ctrl)
        cmd, length = int(self._header[0]), int(self._header[1])
        if cmd == CMD_SHUTDOWN:
            return None
        payload = torch.empty(length, dtype=torch.long)
        dist.broadcast(payload, src=0, group=self.ctrl)
        return decode_chunks(payload)

    def destroy(self) -> None:
        """Tear down the process group if this object created it."""
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_default_group = False
            # Drop our reference too: a process group object that outlives destroy_process_group
            # is freed during interpreter shutdown, where its threads' teardown can abort
            # the process ("terminate called without an active exception").
            self.ctrl = None
