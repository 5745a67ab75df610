"""CTRGCN.sync_batchnorm: two real gloo processes, each on half a batch, take the same training
step as one process on the whole batch (float64), empty-slot sharing included."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

from mmcl.graphs import get_layout
from mmcl.models import CTRGCN

# Shared by the workers and the single-process side: the model, its perturbed weights, the batch.
_SETUP = textwrap.dedent("""
    import torch
    from mmcl.graphs import get_layout
    from mmcl.models import CTRGCN

    def setup():
        torch.manual_seed(0)
        model = CTRGCN(10, get_layout("ntu").adjacency()).double().train()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("alpha"):
                    p.fill_(0.7)
                elif name.endswith("bias") or "bn" in name:
                    p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        x = torch.randn(6, 3, 16, 25, 2, generator=g, dtype=torch.float64)
        x[[0, 1, 4], :, :, :, 1] = 0  # process 0 gets two empty slots (shared), process 1 one
        return model, x, torch.tensor([1, 7, 3, 0, 9, 2])
""")

_WORKER = _SETUP + textwrap.dedent("""
    import sys
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    def run(rank, port, out):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        torch.set_num_threads(1)
        model, x, y = setup()
        model.sync_batchnorm = model.skip_empty_persons = True
        streams = []
        model.layers[0].register_forward_pre_hook(lambda _m, args: streams.append(args[0].shape[1]))
        part = slice(3 * rank, 3 * rank + 3)
        logits = model(x[part])
        F.cross_entropy(logits, y[part]).backward()
        for p in model.parameters():  # what DDP does: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= 2
        everyone = [torch.empty_like(logits) for _ in range(2)]
        dist.all_gather(everyone, logits.detach())
        if rank == 0:
            torch.save({"logits": torch.cat(everyone), "streams": streams,
                        "grads": {n: p.grad for n, p in model.named_parameters()},
                        "buffers": dict(model.named_buffers())}, out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_synced_processes_take_the_one_process_step(tmp_path: Path):
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    out = tmp_path / "rank0.pt"
    proc = subprocess.run([sys.executable, str(worker), str(_free_port()), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    synced = torch.load(out, weights_only=True)

    namespace: dict = {}
    exec(_SETUP, namespace)
    model, x, y = namespace["setup"]()  # one process, the whole batch, plain BatchNorm
    logits = model(x)
    F.cross_entropy(logits, y).backward()

    assert synced["streams"] == [4 + 1]  # process 0: 4 streams with actors, 1 shared for its 2 empty slots
    torch.testing.assert_close(synced["logits"], logits.detach(), rtol=1e-9, atol=1e-9 * logits.abs().max().item())
    scale = max(p.grad.abs().max().item() for p in model.parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(synced["grads"][name], p.grad, rtol=1e-9, atol=1e-11 * scale, msg=name)
    for name, b in model.named_buffers():  # running statistics of the whole batch, on every process
        torch.testing.assert_close(synced["buffers"][name], b, rtol=1e-9, atol=1e-12, msg=name)


def test_sync_batchnorm_is_off_by_default_and_needs_a_process_group():
    model = CTRGCN(10, get_layout("ntu").adjacency()).train()
    assert not model.sync_batchnorm
    model.sync_batchnorm = True  # without torch.distributed initialised: plain BatchNorm, no error
    x = torch.randn(2, 3, 8, 25, 2)
    assert model(x).shape == (2, 10)
