"""Skeleton-only inference, made fast: BatchNorm folded into the weights, empty person slots
skipped, batches cut into cache-sized chunks on CPU, small batches replayed from CUDA graphs on a
GPU, no autograd; optionally, on CPU, the model compiled by inductor for latency-bound use.

``optimize_for_inference(model)`` returns a callable for ``mmcl test``; it computes the same
logits as ``model.eval()(x)`` (to float rounding). ``dtype=torch.bfloat16`` runs it in bf16:
worth it only where the CPU has native support (AVX512-BF16 or AMX; :func:`bf16_is_fast`) or on
a GPU; on AVX2-only CPUs a bf16 matrix product is ~60x slower than float32.
"""

from __future__ import annotations

import copy
import os
import shutil
import sysconfig
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mmcl.errors import MMCLError
from mmcl.models.ctrgcn import CTRGCN, DILATIONS, empty_person_slots

# Samples per forward chunk on CPU: activations of a few samples stay in cache; at 64 samples per
# call CTR-GCN's working set spills to memory and runs slower per sample than at batch 1.
CPU_CHUNK = 4
# The same for a model in bf16 (or fp16), whose products need larger operands to run near their
# peak: 16-sample chunks ran batch 64 about 1.2x faster than 4-sample ones on a CPU with
# AVX512-BF16 (47-51 against 41-42 samples/s), float32 being best at 4-8.
CPU_CHUNK_REDUCED_PRECISION = 16
# On a GPU, batches of at most this many samples replay a CUDA graph of the whole model: a
# batch-1 forward launches ~400 small kernels and the GPU waits on the launches, so replaying
# them as one graph is ~8x faster on an H100 (benchmarks/gpu_speed.py). Larger batches keep the
# GPU busy by themselves and run eagerly, with empty person slots skipped.
CUDA_GRAPH_MAX_BATCH = 8


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel along ``dim`` (a folded BatchNorm that cannot be merged)."""

    def __init__(self, scale: Tensor | None, shift: Tensor, dim: int):
        super().__init__()
        self.register_buffer("scale", None if scale is None else scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[self.dim] = -1
        if self.scale is not None:
            x = x * self.scale.view(shape)
        return x + self.shift.view(shape)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``k * x + shift``."""
    k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return k, bn.bias - k * bn.running_mean


def _fold_linear(lin: nn.Module, k: Tensor, shift: Tensor) -> None:
    """Scale output channel i of a Linear/Conv by k[i] and add shift[i] to its bias."""
    shape = (-1,) + (1,) * (lin.weight.ndim - 1)
    lin.weight.mul_(k.view(shape))
    lin.bias.mul_(k).add_(shift)


@torch.no_grad()
def fold_batchnorm(model: CTRGCN) -> CTRGCN:
    """An inference-only copy of ``model`` with every BatchNorm after a linear map folded into it.

    Do not train the copy: its BatchNorms are gone (replaced by their eval-mode affine maps).
    """
    model = copy.deepcopy(model).eval()
    for unit in model.layers:
        gcn = unit.gcn
        k, shift = _bn_affine(gcn.bn)
        s, c = gcn.subsets, gcn.out_channels
        gcn.value_weight.view(s, c, -1).mul_(k.view(1, c, 1))  # y is linear in each value channel
        gcn.value_bias.view(s, c).mul_(k)
        if gcn.down is not None:
            _fold_linear(gcn.down[0], *_bn_affine(gcn.down[1]))
            gcn.down[0].bias.add_(shift)  # the BN shift joins the residual's bias
            gcn.down[1] = nn.Identity()
            gcn.bn = nn.Identity()
        else:
            gcn.bn = ChannelAffine(None, shift, dim=1)
        tcn = unit.tcn
        _fold_linear(tcn.entry, *_bn_affine(tcn.entry_bn))
        tcn.entry_bn = nn.Identity()
        k, shift = _bn_affine(tcn.out_bn)
        q, nd = tcn.branch_channels, len(DILATIONS)
        for i, conv in enumerate(tcn.temporal):
            _fold_linear(conv, k[i * q : (i + 1) * q], shift[i * q : (i + 1) * q])
        tcn.pool_affine = ChannelAffine(k[nd * q : (nd + 1) * q], shift[nd * q : (nd + 1) * q], dim=0)
        _fold_linear(tcn.point, k[(nd + 1) * q :], shift[(nd + 1) * q :])
        tcn.out_bn = nn.Identity()
        if unit.residual is not None:
            _fold_linear(unit.residual[0], *_bn_affine(unit.residual[1]))
            unit.residual[1] = nn.Identity()
    return model


def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 / AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def slow_bf16_note(device: torch.device, dtype: torch.dtype | None, bf16_native: bool | None = None) -> str | None:
    """A warning when bf16 would run on a CPU without native bf16 (many times slower than
    float32 there), else None. ``bf16_native`` defaults to :func:`bf16_is_fast`."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    if bf16_is_fast() if bf16_native is None else bf16_native:
        return None
    return "warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs far slower than float32 here"


class EmptySlotSkipper:
    """``model(x)`` that does not run the backbone on empty person slots.

    In eval mode CTR-GCN treats each person as a separate stream until the final mean over
    persons, so an all-zero slot (no second actor: most NTU RGB+D 60 samples) always yields the
    same pooled feature: a constant of the model, the slot and the clip length. It is computed
    once per (slot, frames) and reused, which halves the work for one-actor samples. Actor 1's
    slot is always run. The logits equal ``model(x)``'s up to float summation order.
    """

    def __init__(
        self,
        model: CTRGCN,
        backbone: Callable[[Tensor], Tensor] | None = None,
        whole: Callable[[Tensor], Tensor] | None = None,
    ):
        self.model = model
        self._backbone = backbone  # person streams -> feature maps; None: model.backbone
        self._whole = whole  # x -> logits for inputs without empty slots; None: embed, pooled, classify
        self._empty: dict[tuple, Tensor] = {}  # (slot, T, dtype, device) -> pooled feature (C_out,)

    def __call__(self, x: Tensor) -> Tensor:
        n, c, t, v, m = x.shape
        empty = empty_person_slots(x)
        if m == 1 or not empty.any():
            if self._whole is not None:
                return self._whole(x)
            pooled = self.pooled(self.model.embed(x))
        else:
            streams = self.model.embed(x)
            run = ~empty.reshape(-1)  # streams n * M + m, as CTRGCN.embed orders them
            pooled = streams.new_empty(n * m, self.model.feature_dim)
            pooled[run] = self.pooled(streams[:, run])
            slots = empty.nonzero()
            for slot in slots[:, 1].unique().tolist():
                rows = slots[slots[:, 1] == slot, 0] * m + slot
                pooled[rows] = self._empty_feature(slot, x)
        return self.model.classify(pooled.view(n, m, -1).mean(dim=1))

    def pooled(self, streams: Tensor) -> Tensor:
        """Person streams ``(C, B, V, T)`` -> per-stream features ``(B, C_out)``, through the given
        or the model's backbone."""
        return (self._backbone or self.model.backbone)(streams).mean(dim=(2, 3)).t()

    def _empty_feature(self, slot: int, x: Tensor) -> Tensor:
        _, c, t, v, m = x.shape
        key = (slot, t, x.dtype, x.device)
        if key not in self._empty:
            streams = self.model.embed(x.new_zeros(1, c, t, v, m))
            # (eager even when the backbone given is compiled: computed once, not worth a compile)
            self._empty[key] = self.model.backbone(streams[:, slot : slot + 1]).mean(dim=(2, 3))[:, 0]
        return self._empty[key]


class CudaGraphed:
    """``forward(x)`` replayed from CUDA graphs: one is captured per input shape, dtype, device
    and autocast setting, the first time it is seen, and they share one memory pool.

    ``forward`` must have no data-dependent control flow and must not synchronise with the host
    (the folded model qualifies; :class:`EmptySlotSkipper` does not). Each call copies ``x`` into
    the graph's static input and returns a copy of its static output.
    """

    def __init__(self, forward: Callable[[Tensor], Tensor]):
        self.forward = forward
        self._graphs: dict[tuple, tuple[Tensor, torch.cuda.CUDAGraph, Tensor]] = {}
        self._pool = None

    def __call__(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        static_in, graph, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: Tensor) -> tuple[Tensor, torch.cuda.CUDAGraph, Tensor]:
        static_in = x.clone()
        with torch.cuda.device(x.device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph: cuBLAS/cuDNN choose kernels
                for _ in range(2):
                    self.forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self.forward(static_in)
        return static_in, graph, static_out


def missing_compile_toolchain() -> str | None:
    """What inductor lacks here to build CPU kernels (a C++ compiler, Python's C headers), or None."""
    missing = []
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in compilers if c):
        missing.append("a C++ compiler (g++, c++ or clang++ on PATH, or $CXX)")
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(header):
        missing.append(f"Python's C headers ({header}; e.g. the python3-dev package)")
    return " and ".join(missing) or None


def compile_for_inference(model: CTRGCN) -> EmptySlotSkipper:
    """``model`` (folded, inference-only) run by inductor, with its weights frozen into the graph
    (fused element-wise kernels, pre-packed oneDNN convolutions) and a C++ wrapper calling its
    ~150 kernels (3-4 % faster at batch 1 in bf16 than inductor's Python wrapper). Inputs without
    empty person slots run the whole forward, input to logits, as one graph (1-1.5 % faster at batch 1
    in bf16 than the backbone's graph between eager steps); inputs with some run the backbone's
    graph on their actors' streams. Needs a C++ compiler and Python's C headers: an MMCLError
    names whichever is missing.

    Shapes are static, and both graphs compile lazily: each new sample count (whole) or
    person-stream count (backbone) or clip length compiles once (7-15 s on 2 cores with
    inductor's cache warm, 30-52 s cold). On a 2-core AVX2 CPU the batch-1 forward got
    1.04-1.18x faster and batch 64 1.06-1.18x (``benchmarks/compiled_inference.py``, four runs).
    """
    missing = missing_compile_toolchain()
    if missing:
        raise MMCLError(f"compiled inference needs {missing}; install it, or use compile=False")
    options = {"freezing": True, "cpp_wrapper": True}
    return EmptySlotSkipper(
        model,
        torch.compile(model.backbone, dynamic=False, options=options),
        torch.compile(model, dynamic=False, options=options),
    )


def optimize_for_inference(
    model: CTRGCN,
    chunk: int | None = None,
    cuda_graph_max_batch: int = CUDA_GRAPH_MAX_BATCH,
    compile: bool = False,
    dtype: torch.dtype | None = None,
) -> Callable[[Tensor], Tensor]:
    """A callable ``x (N, C, T, V, M) -> logits (N, num_class)`` for evaluation.

    BatchNorm is folded into the weights, autograd is off, and:

    * on CPU, empty person slots are not computed (:class:`EmptySlotSkipper`) and the batch is
      processed in chunks of ``chunk`` samples (default ``CPU_CHUNK``, or
      ``CPU_CHUNK_REDUCED_PRECISION`` for a bf16 or fp16 ``dtype``), which keeps each layer's
      activations in cache;
    * on a GPU, batches of at most ``cuda_graph_max_batch`` samples (0: none) replay a CUDA graph
      of the whole model (:class:`CudaGraphed`), and larger ones run eagerly with empty slots
      skipped, in chunks only when ``chunk`` is given;
    * with ``compile=True``, CPU calls run the model compiled by :func:`compile_for_inference`:
      for long-running services that see few shapes, where its one-off compile per shape pays.
      ``mmcl test --compile`` turns it on; there, chunks of mixed actor counts run between one
      and two person streams per sample, each stream count compiled once.

    ``dtype``, if given, is the precision the folded model and its inputs are cast to, and the
    logits come back as float32 (by default the model keeps its dtype and the inputs theirs).
    ``torch.bfloat16`` pays on CPUs with native bf16 (:func:`bf16_is_fast`:
    AVX512-BF16 or AMX) and on GPUs, with logits within about 1 % of float32's; on other CPUs
    it is many times slower.

    The original ``model`` is left untouched.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise MMCLError(f"inference precision must be a floating-point dtype, not {dtype}")
    folded = fold_batchnorm(model)
    if dtype is not None:
        folded = folded.to(dtype)
    forward = EmptySlotSkipper(folded)
    cpu_forward = compile_for_inference(folded) if compile else forward
    graphed = CudaGraphed(folded)
    cpu_chunk = CPU_CHUNK_REDUCED_PRECISION if dtype is not None and dtype.itemsize < 4 else CPU_CHUNK

    @torch.inference_mode()
    def predict(x: Tensor) -> Tensor:
        if dtype is None:
            return _predict(x)
        return _predict(x.to(dtype)).float()

    def _predict(x: Tensor) -> Tensor:
        if x.device.type == "cuda" and x.shape[0] <= cuda_graph_max_batch:
            return graphed(x)
        cpu = x.device.type == "cpu"
        run = cpu_forward if cpu else forward
        size = chunk or (cpu_chunk if cpu else x.shape[0])
        if x.shape[0] <= size:
            return run(x)
        return torch.cat([run(part) for part in x.split(size)])

    predict.model = folded  # type: ignore[attr-defined]
    return predict
