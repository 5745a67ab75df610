"""On a GPU: CUDA-graph inference, and a bf16 training run tested on the GPU.

Skipped without CUDA (CI has none). On a machine with a GPU: ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmcl.graphs import get_layout
from mmcl.models import CTRGCN, optimize_for_inference
from mmcl.scores import load_scores
from test_engine import make_dataset, run_cli, train_run, write_config

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
