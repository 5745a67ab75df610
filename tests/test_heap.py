"""mmcl.heap.keep_freed_memory: training steps stop page-faulting freed memory back in."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mmcl.heap import glibc_malloc, keep_freed_memory

# Two warm-up and six measured CTR-GCN training steps (NTU shape, batch 2), in a fresh process so
# the allocator starts from its defaults; prints the measured steps' page faults and peak memory.
# (Six, not two: with memory kept, glibc's heap still grows now and then, by a few MB, when the
# small chunks that 64-byte-aligned allocations leave keep freed blocks from merging: 2 to 3,300
# faults in two steps here, depending on where the heap lands, against 16-22k without.)
_STEPS = textwrap.dedent("""
    import json, resource, sys
    import torch, torch.nn.functional as F
    from mmcl.heap import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    from mmcl.graphs import get_layout
    from mmcl.models import CTRGCN
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CTRGCN(60, get_layout("ntu").adjacency())
    x, y = torch.randn(2, 3, 64, 25, 2), torch.tensor([1, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        step()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"kept": kept, "faults": usage.ru_minflt - before, "peak_mb": usage.ru_maxrss / 1024}))
""")


def _steps(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not glibc_malloc(), reason="keep_freed_memory tunes glibc's malloc; this is not Linux with glibc")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    default, kept = _steps("default"), _steps("keep")
    assert kept["kept"] is True
    if default["faults"] < 2000:
        pytest.skip(f"this malloc already keeps freed memory ({default['faults']} faults in 6 steps)")
    # Freed blocks are reused: far fewer fresh pages, and no more memory than before.
    assert kept["faults"] < default["faults"] / 6, (default, kept)  # measured: 6-3,600 against 51k
    assert kept["peak_mb"] < default["peak_mb"] * 1.1, (default, kept)


# Blocks of 40 MB, above glibc's largest mmap threshold (32 MB; a batch-64 CTR-GCN activation is
# 52 MB), allocated and freed as in a forward pass, 16 times; prints the page faults of rounds
# 2-16 and the resident memory growth over all of them, in blocks.
_BIG_BLOCKS = textwrap.dedent("""
    import json, resource, sys
    import torch
    from mmcl.heap import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
    start, faults = rss(), []
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(10 * 2**20)
        y = x * 2
        z = torch.relu(y + 1)
        del x, y
        z.sum()
        del z
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"faults": sum(faults[1:]), "growth_blocks": (rss() - start) / (40 * 2**20)}))
""")


@pytest.mark.skipif(not glibc_malloc(), reason="keep_freed_memory tunes glibc's malloc; this is not Linux with glibc")
def test_blocks_above_the_mmap_threshold_are_kept_too():
    def run(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _BIG_BLOCKS, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    pages_per_round = 3 * 40 * 2**20 // 4096
    assert default["faults"] > 15 * pages_per_round / 2, default  # mapped afresh every round
    # Reused from the heap: glibc's aligned allocations leave small chunks that keep some freed
    # blocks from merging, so the heap grows for a few rounds (measured here: 10-20 % of the
    # default's faults, 10-13 blocks), then holds.
    assert kept["faults"] < default["faults"] / 3, (default, kept)
    assert kept["growth_blocks"] < 25, kept


def test_elsewhere_it_is_a_no_op(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
