"""On a GPU: CUDA-graph inference, a bf16 training run tested on the GPU, and synced BatchNorm.

Skipped without CUDA (CI has none). On a machine with a GPU: ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcl.graphs import get_layout
from mmcl.models import CTRGCN, optimize_for_inference
from mmcl.scores import load_scores
from test_engine import make_dataset, run_cli, train_run, write_config
from test_sync_batchnorm import _SETUP, _free_port

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_cuda_graph_inference_equals_eager_and_returns_its_own_tensor():
    torch.manual_seed(0)
    model = CTRGCN(10, get_layout("ntu").adjacency()).cuda().eval()
    graphed = optimize_for_inference(model)  # batches up to CUDA_GRAPH_MAX_BATCH replay a graph
    eager = optimize_for_inference(model, cuda_graph_max_batch=0)
    x, x2 = torch.randn(2, 2, 3, 16, 25, 2, device="cuda").unbind(0)
    y, y2 = graphed(x), graphed(x2)  # the second call replays the graph captured by the first
    assert rel_diff(y, eager(x)) < 1e-5 and rel_diff(y2, eager(x2)) < 1e-5
    assert rel_diff(y, y2) > 1e-3  # the first result was not overwritten by the replay
    # one actor: the graph runs the empty slot, eager skips it; the same logits
    one = x.clone()
    one[..., 1] = 0
    assert rel_diff(graphed(one), eager(one)) < 1e-4
    # bf16 autocast gets its own graph
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yb, yb_eager = graphed(x), eager(x)
    assert yb.dtype == torch.bfloat16 and rel_diff(yb, yb_eager) < 1e-2 and rel_diff(yb, y) < 5e-2


def test_bf16_training_on_the_gpu_then_mmcl_test_there(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)  # tests/conftest.py pins the CPU
    toy = make_dataset(tmp_path / "toy")
    config = write_config(tmp_path / "c.yaml", toy, train={"mixed_precision": "bf16"},
                          schedule={"epochs": 3, "warmup_epochs": 1, "lr_steps": [2]})
    result = train_run(config, tmp_path / "run")
    session = json.loads((tmp_path / "run" / "run.json").read_text())["sessions"][-1]
    assert session["device"].startswith("cuda") and session["mixed_precision"] == "bf16"
    assert result.epochs == 3 and (tmp_path / "run" / "model.safetensors").is_file()

    out = run_cli("test", "--run", str(tmp_path / "run"), "--device", "cuda", "--batch-size", "3")
    assert out.exit_code == 0, out.output
    # the run tested its training model under bf16 autocast; mmcl test runs float32, BatchNorm
    # folded, batches of 3 from CUDA graphs: the same predictions, logits within bf16 rounding
    ours, theirs = load_scores(tmp_path / "run" / "test" / "scores.npz"), load_scores(tmp_path / "run" / "scores.npz")
    order = {n: i for i, n in enumerate(theirs.names)}
    rows = [order[n] for n in ours.names]
    assert rel_diff(torch.from_numpy(ours.scores), torch.from_numpy(theirs.scores[rows])) < 5e-2
    assert np.mean(ours.scores.argmax(1) == theirs.scores[rows].argmax(1)) >= 0.9


# Two processes on the one GPU, gloo (NCCL refuses two ranks on one device): the trainer's
# train.sync_batchnorm GPU path (build.sync_batchnorm -> nn.SyncBatchNorm) under real DDP, each
# process on half the batch, against one process on the whole batch with plain BatchNorm.
_GPU_SYNC_WORKER = _SETUP + textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from mmcl.engine.build import sync_batchnorm

    def setup_on_gpu():
        return [t.cuda() for t in setup()]

    def run(rank, port, out):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        model, x, y = setup_on_gpu()
        cfg = SimpleNamespace(train=SimpleNamespace(sync_batchnorm=True))
        model = sync_batchnorm(cfg, model, torch.device("cuda"), num_processes=2)
        kinds = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
        ddp = DistributedDataParallel(model, device_ids=[0])
        part = slice(3 * rank, 3 * rank + 3)
        logits = ddp(x[part])
        F.cross_entropy(logits, y[part]).backward()
        everyone = [torch.empty_like(logits) for _ in range(2)]
        dist.all_gather(everyone, logits.detach())
        if rank == 0:
            torch.save({"logits": torch.cat(everyone).cpu(), "kinds": kinds,
                        "grads": {n: p.grad.cpu() for n, p in model.named_parameters()},
                        "buffers": {n: b.cpu() for n, b in model.named_buffers()}}, out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
""")


def test_sync_batchnorm_on_the_gpu_two_processes_take_the_one_process_step(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(_GPU_SYNC_WORKER)
    out = tmp_path / "rank0.pt"
    proc = subprocess.run([sys.executable, str(worker), str(_free_port()), str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    synced = torch.load(out, weights_only=True)
    assert synced["kinds"] == ["SyncBatchNorm"]  # every BatchNorm converted, the data BatchNorm too

    namespace: dict = {}
    exec(_SETUP, namespace)
    model, x, y = (t.cuda() for t in namespace["setup"]())  # one process, the whole batch, plain BatchNorm
    logits = model(x)
    F.cross_entropy(logits, y).backward()

    torch.testing.assert_close(synced["logits"], logits.detach().cpu(), rtol=1e-9, atol=1e-9 * logits.abs().max().item())
    scale = max(p.grad.abs().max().item() for p in model.parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(synced["grads"][name], p.grad.cpu(), rtol=1e-9, atol=1e-11 * scale, msg=name)
    for name, b in model.named_buffers():
        torch.testing.assert_close(synced["buffers"][name], b.cpu(), rtol=1e-9, atol=1e-12, msg=name)
