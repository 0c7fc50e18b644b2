"""Tensor parallelism: tp=2 (gloo, one spawned worker process) equals tp=1."""

from __future__ import annotations

import ipaddress
import os
import re

import pytest
import torch

from charbench.engine.api import EngineConfig
from charbench.engine.model import LlamaModel, get_preset
from charbench.engine.runner import make_runner
from charbench.engine.tp import decode_chunks, encode_chunks
from charbench.engine.weights import RandomSource, load_weights
from charbench.errors import ConfigError

PROMPTS = [[256] + list(b"Tensor parallel ranks"), [256] + list(b"agree"), [256, 1, 2, 3, 4, 5, 6, 7, 8]]


def _generate(runner, chunk_driver, steps: int) -> tuple[list[list[int]], torch.Tensor]:
    drv = chunk_driver(runner, scatter_seed=1)
    # first prompt in two chunks, to exercise the cached-prefix path across ranks
    drv.run((0, PROMPTS[0][:9]))
    logits = drv.run((0, PROMPTS[0][9:]), (1, PROMPTS[1]), (2, PROMPTS[2]))
    first = logits.clone()
    out: list[list[int]] = [[], [], []]
    for _ in range(steps):
        toks = logits.argmax(-1).tolist()
        for i, t in enumerate(toks):
            out[i].append(t)
        logits = drv.run(*[(i, [t]) for i, t in enumerate(toks)])
    return out, first


def test_tp2_equals_tp1(chunk_driver):
    cfg = dict(model="tiny", kv_cache_gb=0.004, block_size=4, seed=11)
    ref_toks, ref_logits = _generate(make_runner(EngineConfig(**cfg)), chunk_driver, 8)
    runner = make_runner(EngineConfig(tp=2, **cfg))
    try:
        assert runner.tp == 2 and len(runner._workers) == 1
        assert runner.kv_cache.layers[0][0].shape[2] == get_preset("tiny").num_kv_heads // 2
        toks, logits = _generate(runner, chunk_driver, 8)
    finally:
        runner.shutdown()
    assert toks == ref_toks
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert not runner._workers
    runner.shutdown()  # idempotent


def test_shards_are_slices_of_the_full_model():
    cfg = get_preset("tiny")
    full = LlamaModel(cfg, torch.float32, "cpu")
    load_weights(full, RandomSource(4, "cpu"))
    d, nh, nkv = cfg.head_dim, cfg.num_heads // 2, cfg.num_kv_heads // 2
    for rank in (0, 1):
        shard = LlamaModel(cfg, torch.float32, "cpu", tp=2, with_lm_head=False)
        load_weights(shard, RandomSource(4, "cpu"), tp_rank=rank, tp_size=2)
        fw, sw = full.layers[1], shard.layers[1]
        q = fw.qkv_weight[: cfg.q_size]
        k = fw.qkv_weight[cfg.q_size : cfg.q_size + cfg.kv_size]
        expect = torch.cat([q[rank * nh * d : (rank + 1) * nh * d], k[rank * nkv * d : (rank + 1) * nkv * d]])
        torch.testing.assert_close(sw.qkv_weight[: expect.shape[0]], expect, atol=0, rtol=0)
        cols = slice(rank * nh * d, (rank + 1) * nh * d)
        torch.testing.assert_close(sw.o_weight, fw.o_weight[:, cols], atol=0, rtol=0)
        inter = cfg.intermediate_size // 2
        torch.testing.assert_close(
            sw.down_weight, fw.down_weight[:, rank * inter : (rank + 1) * inter], atol=0, rtol=0)


def test_chunk_encoding_roundtrip():
    from charbench.engine.runner import SeqChunk

    chunks = [SeqChunk(3, [1, 2, 3], 5, [7, 8], True), SeqChunk(9, [4], 0, [1], False)]
    back = decode_chunks(encode_chunks(chunks))
    assert [(c.seq_id, c.token_ids, c.start_pos, c.block_table, c.need_logits) for c in back] == [
        (3, [1, 2, 3], 5, [7, 8], True), (9, [4], 0, [1], False)]


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match="--tp 3: model 'tiny' has num_heads=8"):
        make_runner(EngineConfig(model="tiny", tp=3))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_tp2_nccl_equals_tp1(chunk_driver):
    cfg = dict(model="tiny", device="cuda", kv_cache_gb=0.004, block_size=4, seed=11)
    ref_toks, ref_logits = _generate(make_runner(EngineConfig(**cfg)), chunk_driver, 8)
    runner = make_runner(EngineConfig(tp=2, **cfg))
    try:
        toks, logits = _generate(runner, chunk_driver, 8)
    finally:
        runner.shutdown()
    assert toks == ref_toks
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


TORCHRUN_SCRIPT = """
import sys
from charbench.engine.api import EngineConfig
from charbench.engine.runner import SeqChunk, make_runner

if __name__ == "__main__":
    runner = make_runner(EngineConfig(model="tiny", kv_cache_gb=0.004, block_size=4, seed=11, tp=2))
    # only rank 0 gets here; the other rank served batches inside make_runner and exited
    ids = [256] + list(b"torchrun")
    logits = runner.forward([SeqChunk(0, ids, 0, list(range(3)), True)])
    print("ARGMAX", int(logits.argmax()), float(logits[0, :4].sum()))
    runner.shutdown()
"""


def test_torchrun_launch(tmp_path, chunk_driver):
    """Ranks started by torchrun: rank 1 runs the worker loop inside make_runner."""
    import subprocess
    import sys

    from charbench.engine.tp import free_port

    script = tmp_path / "run_tp.py"
    script.write_text(TORCHRUN_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ARGMAX")]
    assert len(line) == 1  # printed by rank 0 only
    _, arg, total = line[0].split()
    ref = chunk_driver(make_runner(EngineConfig(model="tiny", kv_cache_gb=0.004, block_size=4, seed=11)))
    logits = ref.run((0, [256] + list(b"torchrun")))
    assert int(arg) == int(logits.argmax())
    assert abs(float(total) - float(logits[0, :4].sum())) < 1e-3


def _listening_addresses_of_this_process() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket this process holds (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
    return out


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads Linux /proc")
def test_worker_rendezvous_listens_on_loopback_only(monkeypatch):
    """The TP group's rendezvous (and gloo's sockets) must not be reachable from other machines."""
    import torch.distributed as dist

    from charbench.engine.tp import TPGroup, free_port

    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    before = set(_listening_addresses_of_this_process())
    port = free_port()
    group = TPGroup.init(0, 1, f"tcp://127.0.0.1:{port}", torch.device("cpu"))
    try:
        t = torch.ones(3)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]
        new = set(_listening_addresses_of_this_process()) - before
        assert any(p == port for _, p in new)  # the rendezvous store is among them
        assert [(a, p) for a, p in new if not _is_loopback(a)] == [], new
    finally:
        group.destroy()
    assert not dist.is_initialized()
