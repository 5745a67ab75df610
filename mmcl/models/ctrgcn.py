"""CTR-GCN (Chen et al., ICCV 2021), the same model as the original, computed faster on CPU.

Architecture (unchanged): a data BatchNorm over persons x joints x channels; ten TCN-GCN units
with 64 x4, 128 (stride 2) x3, 256 (stride 2) x3 channels; each spatial unit sums three CTRGC
subsets (one per adjacency partition) with ``alpha * relation + A`` (A a learnable copy of the
partition, alpha initialised to 0), then a BatchNorm whose weight starts at 1e-6, a residual and a
ReLU; a multi-scale temporal unit (kernel 5, dilations 1 and 2, a max-pool branch and a 1x1
branch); global average pooling over time, joints and persons; dropout; a linear classifier.
With 120 classes, 3 channels, 2 persons and 25 joints it has 1,462,092 parameters, as upstream.

What is computed differently (same function, same parameter count; ``tests/test_models.py``
checks outputs and gradients against a plain implementation with the same weights):

* Channel-first layout: activations are ``(C, N*M, V, T)``, so every 1x1 convolution is one
  large matrix product ``W @ x`` (no per-sample or layout-reordering overhead), BatchNorm reads
  each channel contiguously, and the graph product is a batched product of contiguous
  ``(U, V) @ (V, T)`` matrices (the product alone 14-16 % faster on CPU than the joints-last
  ``(T, V) @ (V, U)``; ``benchmarks/README.md``, session 15).
* The three CTRGC subsets share one value GEMM (``conv3`` of all subsets, ``3*C`` rows) and one
  relation GEMM (``conv1``/``conv2`` of all subsets); ``conv3`` and the relations are computed per
  subset instead when the stacked tensor would exceed ``FRESH_MAP_BYTES`` (see there).
* ``conv1``/``conv2`` run on the time-averaged input: they are affine, so
  ``mean_t(conv(x)) == conv(mean_t(x))``, a pass over all frames saved.
* ``alpha * conv4(tanh(x1 - x2)) + A`` is a single GEMM: conv4's weight (times alpha) gets two
  extra columns (alpha * bias, 1) and the tanh differences two extra rows (1, A), so the large
  per-channel relation tensor is written once, not three times.
* The subsets' graph products accumulate in place (``_GraphProduct``), without the zero-filled
  buffers autograd would allocate for indexing.
* The multi-scale temporal unit's three 1x1 entry convolutions are one GEMM with one BatchNorm,
  and its four branch BatchNorms (per channel) are one BatchNorm after the concatenation.
* Max-pooling over time runs on the contiguous time axis as a 1-D pooling, with its own backward
  in CPU training (``_MaxPoolTime``).
* Optionally (``skip_empty_persons``, on in ``mmcl train`` on CPU), a training batch runs all its
  empty person slots as one stream that BatchNorm counts once per slot (``pooled_features``).
* Optionally (``sync_batchnorm``), training BatchNorms on CPU processes take their statistics
  from all processes' batches together (``BatchNormMode``), as ``nn.SyncBatchNorm`` does on GPUs.

``load_upstream_state_dict`` maps a checkpoint of the original code (``l1.gcn1.convs.0.conv1``
...) onto this model, so published CTR-GCN weights can be used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.errors import MMCLError
from mmcl.heap import MMAP_THRESHOLD_MAX

# (in_channels, out_channels, stride, residual) of the ten units, for base width 64.
_UNITS = (
    (None, 64, 1, False),
    (64, 64, 1, True),
    (64, 64, 1, True),
    (64, 64, 1, True),
    (64, 128, 2, True),
    (128, 128, 1, True),
    (128, 128, 1, True),
    (128, 256, 2, True),
    (256, 256, 1, True),
    (256, 256, 1, True),
)
TEMPORAL_KERNEL = 5
DILATIONS = (1, 2)
# glibc's malloc serves every block above 32 MB (its largest mmap threshold) with a fresh mmap and
# unmaps it on free, so the kernel page-faults and zero-fills it again on every allocation, unless
# mmcl.heap.keep_freed_memory is on (as in mmcl train; not in mmcl test). The spatial unit keeps
# its per-subset tensors apart when stacking them would cross this size: at batch 16 with two
# actors the stacked conv3 output is 39 MB and the stacked relation 61 MB, which cost about 1 GB
# of fresh pages and 0.8 s of kernel time per training step on 2 cores (under glibc's default).
FRESH_MAP_BYTES = MMAP_THRESHOLD_MAX


def _stacked_too_large(numel: int, like: Tensor) -> bool:
    """Whether ``numel`` elements of ``like``'s dtype would cross ``FRESH_MAP_BYTES``."""
    return numel * like.element_size() > FRESH_MAP_BYTES


def _kaiming_fan_out_(weight: Tensor, fan_out: int) -> None:
    """``kaiming_normal_(mode='fan_out')`` as for one unfused conv with ``fan_out`` outputs."""
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_out))


def _bn_init(bn: nn.modules.batchnorm._BatchNorm, weight: float | None) -> None:
    """BN weight = ``weight`` (or ~N(1, 0.02) when None, the temporal unit's init), bias 0."""
    with torch.no_grad():
        if weight is None:
            bn.weight.normal_(1.0, 0.02)
        else:
            bn.weight.fill_(weight)
        bn.bias.zero_()


def _pointwise_layer(cin: int, cout: int, fan_out: int | None = None) -> nn.Linear:
    """A 1x1 convolution's weights, initialised as upstream's (Kaiming fan-out, bias 0)."""
    lin = nn.Linear(cin, cout)
    _kaiming_fan_out_(lin.weight, fan_out or cout)
    nn.init.zeros_(lin.bias)
    return lin


def _pointwise(lin: nn.Linear, x: Tensor) -> Tensor:
    """1x1 convolution in the channel-first layout: one GEMM ``W @ x`` over all positions."""
    out = torch.addmm(lin.bias.unsqueeze(1), lin.weight, x.reshape(x.shape[0], -1))
    return out.view(lin.out_features, *x.shape[1:])


@dataclass(frozen=True)
class BatchNormMode:
    """Where a training BatchNorm takes its batch statistics from.

    ``last_count``: the last person stream stands for that many identical streams (empty slots
    shared, see :meth:`CTRGCN.pooled_features`) and is counted that many times. ``sync``: the
    statistics are those of the whole batch across the processes of the default
    ``torch.distributed`` group, as ``nn.SyncBatchNorm`` does on GPUs (here for CPU processes).
    """

    last_count: int = 1
    sync: bool = False


PLAIN_BATCHNORM = BatchNormMode()


def _bn(bn: nn.BatchNorm2d, x: Tensor, mode: BatchNormMode = PLAIN_BATCHNORM) -> Tensor:
    """BatchNorm2d on a channel-first tensor ``(C, B, V, T)``: the same per-channel statistics,
    gathered per ``mode`` in training."""
    c, b, v, t = x.shape
    if bn.training and (mode.last_count > 1 or mode.sync):
        return _bn_gathered(bn, x.view(1, c, b * v, t), v, mode).view(c, b, v, t)
    return bn(x.view(1, c, b * v, t)).view(c, b, v, t)


def _merge_stats(a: tuple, b: tuple) -> tuple:
    """Count, mean and (biased) variance of two sets together (Chan et al.'s pairwise update)."""
    (n_a, mean_a, var_a), (n_b, mean_b, var_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), (n_a * var_a + n_b * var_b + delta**2 * (n_a * n_b / n)) / n


def _bn_gathered(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, last_rows: int, mode: BatchNormMode) -> Tensor:
    """Training BatchNorm of ``x`` ``(N, C, L, W)`` with statistics gathered per ``mode``: the
    last ``last_rows`` positions along L (the last stream) counted ``mode.last_count`` times, and
    all processes' batches together when ``mode.sync``. The running statistics follow the same
    statistics; the gradient is the one the copies (and the other processes' samples) give."""
    c = x.shape[1]
    with torch.no_grad():
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        stats = (x.numel() // c, mean, var)
        if mode.last_count > 1:
            tail = x[:, :, -last_rows:]
            var_t, mean_t = torch.var_mean(tail, dim=(0, 2, 3), correction=0)
            stats = _merge_stats(stats, ((mode.last_count - 1) * (tail.numel() // c), mean_t, var_t))
        if mode.sync:
            stats = _all_processes_stats(stats)
        n, mean, var = stats
        if bn.track_running_stats and bn.running_mean is not None:
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean, factor)
            bn.running_var.lerp_(var * (n / (n - 1)), factor)
    return _GatheredBatchNorm.apply(x, bn.weight, bn.bias, mean, var, bn.eps, n, last_rows, mode)


def _all_processes_stats(stats: tuple) -> tuple:
    """Merge each process's (count, mean, variance) over the default process group, in rank order
    (so every process gets the same result)."""
    n, mean, var = stats
    packed = torch.cat([mean.new_tensor([n], dtype=torch.float64), mean.double(), var.double()])
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, packed)
    c = mean.numel()
    merged = None
    for part in parts:
        one = (int(part[0]), part[1 : 1 + c], part[1 + c :])
        merged = one if merged is None else _merge_stats(merged, one)
    return merged[0], merged[1].to(mean.dtype), merged[2].to(var.dtype)


class _GatheredBatchNorm(torch.autograd.Function):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` with ``mean``/``var`` gathered by
    :func:`_bn_gathered` over ``n`` values, differentiated through them."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float,
                n: int, last_rows: int, mode: BatchNormMode):
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.n, ctx.last_rows, ctx.mode = eps, n, last_rows, mode
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, var = ctx.saved_tensors
        c, mode = x.shape[1], ctx.mode
        # The per-channel sums sum(grad * xhat) (= grad of gamma) and sum(grad) (= grad of beta), by
        # the eval-mode backward. The copies of the last stream share its values, so these sums
        # over the batch with copies are the plain sums; with sync, they are summed over processes
        # (gamma's and beta's own gradients stay per process: DDP averages them).
        _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, mean, var, None, None, False, ctx.eps, [False, True, True])
        sums = torch.cat([grad_weight, grad_bias])
        if mode.sync:
            dist.all_reduce(sums)
        sum_xhat, sum_grad = sums.split(c)
        # dx = gamma * invstd * grad - count * (a + k * x), the last two terms through mean and var,
        # per stream times the streams it stands for; k = gamma * invstd^2 * sum(grad * xhat) / n.
        invstd = torch.rsqrt(var + ctx.eps)
        k = (weight * invstd * invstd * sum_xhat / ctx.n).view(1, c, 1, 1)
        a = (weight * invstd * sum_grad / ctx.n).view(1, c, 1, 1) - k * mean.view(1, c, 1, 1)
        grad_x = torch.addcmul(a.neg(), x, k.neg())
        grad_x.addcmul_(grad, (weight * invstd).view(1, c, 1, 1))
        if mode.last_count > 1:
            last = slice(x.shape[2] - ctx.last_rows, None)  # the last stream's frames
            grad_x[:, :, last].sub_((a + k * x[:, :, last]) * (mode.last_count - 1))
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None


def _max_pool_time(x: Tensor, stride: int) -> Tensor:
    """Max-pool over time (window 3, padding 1) of a channel-first ``(C, B, V, T)`` tensor: a 1-D
    pooling along the contiguous time axis of every (channel, stream, joint) row."""
    c, b, v, t = x.shape
    rows = x.reshape(c * b * v, t)
    if x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled():
        return _MaxPoolTime.apply(rows, stride).view(c, b, v, -1)
    return F.max_pool1d(rows.unsqueeze(1), 3, stride=stride, padding=1).view(c, b, v, -1)


class _MaxPoolTime(torch.autograd.Function):
    """Max-pool (window 3, padding 1) along the last axis of ``(R, T)`` rows, for CPU training.

    PyTorch's CPU pooling with indices (what autograd needs) is not vectorised along a contiguous
    last axis and took 5-8x the forward without indices. Here the forward runs without indices,
    and the backward finds each window's first maximum by comparing the three shifted inputs with
    the output, as max-pooling routes gradients (to the first maximum of a window).
    """

    @staticmethod
    def forward(ctx, rows: Tensor, stride: int) -> Tensor:
        y = F.max_pool1d(rows.unsqueeze(1), 3, stride=stride, padding=1).squeeze(1)
        ctx.save_for_backward(rows, y)
        ctx.stride = stride
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        rows, y = ctx.saved_tensors
        s, (r, t), n = ctx.stride, rows.shape, y.shape[1]
        padded = F.pad(rows, (1, 1), value=float("-inf"))
        # The window of output i covers padded positions s*i, s*i + 1, s*i + 2.
        taps = [slice(k, k + s * (n - 1) + 1, s) for k in range(3)]
        first = padded[:, taps[0]] == y
        second = (padded[:, taps[1]] == y) & ~first
        grad_first, grad_second = grad * first, grad * second
        out = grad.new_zeros(r, t + 2)
        out[:, taps[0]] += grad_first
        out[:, taps[1]] += grad_second
        out[:, taps[2]] += grad - grad_first - grad_second
        return out[:, 1:-1], None


class _GraphProduct(torch.autograd.Function):
    """``y[cb] = sum_s rel_s[cb] @ value_s[cb]``: the subsets' graph products, summed.

    Takes the S values ``(CB, V, T)`` and S relations ``(CB, U, V)`` as separate tensors (see
    :meth:`SpatialUnit.forward`). Written out so the backward fills each subset's gradient
    without the zero-filled full-size buffers that indexing or ``sum`` would cost in autograd.
    """

    @staticmethod
    def forward(ctx, subsets: int, *tensors: Tensor) -> Tensor:
        values, rels = tensors[:subsets], [r.to(tensors[0].dtype) for r in tensors[subsets:]]
        ctx.subsets = subsets
        ctx.save_for_backward(*values, *rels)
        y = torch.bmm(rels[0], values[0])
        for value, rel in zip(values[1:], rels[1:]):
            y.baddbmm_(rel, value)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        s = ctx.subsets
        saved = ctx.saved_tensors
        values, rels = saved[:s], saved[s:]
        grad = grad.to(values[0].dtype)
        grad_values: list[Tensor | None] = [None] * s
        grad_rels: list[Tensor | None] = [None] * s
        for i in range(s):
            if ctx.needs_input_grad[1 + s + i]:
                grad_rels[i] = torch.bmm(grad, values[i].transpose(1, 2))
            if ctx.needs_input_grad[1 + i]:
                grad_values[i] = torch.bmm(rels[i].transpose(1, 2), grad)
        return (None, *grad_values, *grad_rels)


class SpatialUnit(nn.Module):
    """CTR-GCN's ``unit_gcn``: three CTRGC subsets summed, BN (weight 1e-6), residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: np.ndarray):
        super().__init__()
        subsets = adjacency.shape[0]
        rel = 8 if in_channels in (3, 9) else in_channels // 8
        self.subsets, self.rel_channels, self.out_channels = subsets, rel, out_channels
        # conv1 and conv2 of every subset, rows ordered [conv1|conv2, subset, rel].
        self.rel_weight = nn.Parameter(torch.empty(2 * subsets * rel, in_channels))
        self.rel_bias = nn.Parameter(torch.zeros(2 * subsets * rel))
        # conv3 of every subset, rows ordered [subset, out].
        self.value_weight = nn.Parameter(torch.empty(subsets * out_channels, in_channels))
        self.value_bias = nn.Parameter(torch.zeros(subsets * out_channels))
        # conv4 of every subset.
        self.expand_weight = nn.Parameter(torch.empty(subsets, out_channels, rel))
        self.expand_bias = nn.Parameter(torch.zeros(subsets, out_channels))
        self.PA = nn.Parameter(torch.from_numpy(np.asarray(adjacency, dtype=np.float32)).clone())
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(out_channels)
        if in_channels != out_channels:
            self.down = nn.Sequential(_pointwise_layer(in_channels, out_channels), nn.BatchNorm2d(out_channels))
            _bn_init(self.down[1], 1.0)
        else:
            self.down = None
        _kaiming_fan_out_(self.rel_weight, rel)
        _kaiming_fan_out_(self.value_weight, out_channels)
        _kaiming_fan_out_(self.expand_weight, out_channels)
        _bn_init(self.bn, 1e-6)

    def relation(self, x: Tensor) -> list[Tensor]:
        """Per subset, the per-channel adjacency ``alpha * conv4(tanh(x1 - x2)) + A``, each
        ``(C, B, U, V)``."""
        cin, b, v, _ = x.shape
        s, r, c = self.subsets, self.rel_channels, self.out_channels
        # conv1/conv2 are affine, so they commute with the mean over time: pool first.
        q = torch.addmm(self.rel_bias.unsqueeze(1), self.rel_weight, x.mean(3).view(cin, b * v))
        q = q.view(2, s, r, b, v)
        diff = torch.tanh(q[0].unsqueeze(-1) - q[1].unsqueeze(-2))  # [s, r, b, u, v] = tanh(x1[u] - x2[v])
        # One GEMM per subset gives alpha * conv4(diff) + A: conv4's weight (times alpha) is extended
        # with two columns, alpha * bias and 1, and diff with two rows, 1 and A (per sample).
        # (Concatenated in 5-D and flattened after: inductor then vectorises the tanh along v.)
        pa = self.PA.reshape(s, 1, 1, v, v).expand(s, 1, b, v, v)
        rows = torch.cat([diff, diff.new_ones(s, 1, b, v, v), pa], dim=1).view(s, r + 2, b * v * v)
        cols = torch.cat(
            [self.expand_weight * self.alpha, (self.expand_bias * self.alpha).unsqueeze(-1), diff.new_ones(s, c, 1)],
            dim=2,
        )
        if _stacked_too_large(s * c * b * v * v, rows):
            return [torch.mm(cols[i], rows[i]).view(c, b, v, v) for i in range(s)]
        return list(torch.bmm(cols, rows).view(s, c, b, v, v).unbind(0))

    def forward(self, x: Tensor, bn_mode: BatchNormMode = PLAIN_BATCHNORM) -> Tensor:
        """Channel-first ``(C_in, B, V, T)`` -> ``(C_out, B, V, T)``; ``bn_mode``: see ``_bn``."""
        cin, b, v, t = x.shape
        s, c = self.subsets, self.out_channels
        x2d = x.reshape(cin, -1)
        # conv3 of all subsets: one GEMM, or one per subset when the stacked result would be a
        # block that malloc maps afresh on every step (see FRESH_MAP_BYTES).
        if _stacked_too_large(s * c * x2d.shape[1], x):
            values = [
                torch.addmm(bias.unsqueeze(1), weight, x2d).view(c * b, v, t)
                for weight, bias in zip(self.value_weight.split(c), self.value_bias.split(c))
            ]
        else:
            values = torch.addmm(self.value_bias.unsqueeze(1), self.value_weight, x2d).view(s, c * b, v, t).unbind(0)
        rels = [rel.view(c * b, v, v) for rel in self.relation(x)]
        # y[c, b] = sum_s rel_s[c, b] @ value_s[c, b]
        y = _GraphProduct.apply(s, *values, *rels)
        y = _bn(self.bn, y.view(c, b, v, t), bn_mode)
        res = x if self.down is None else _bn(self.down[1], _pointwise(self.down[0], x), bn_mode)
        return torch.relu_(y + res)


class TemporalUnit(nn.Module):
    """CTR-GCN's multi-scale temporal conv: two dilated kernel-5 branches, max-pool, 1x1."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        q = channels // (len(DILATIONS) + 2)
        self.branch_channels, self.stride = q, stride
        # The 1x1 entry convs of the dilated branches and of the max-pool branch, fused.
        self.entry = _pointwise_layer(channels, (len(DILATIONS) + 1) * q, fan_out=q)
        self.entry_bn = nn.BatchNorm2d((len(DILATIONS) + 1) * q)
        self.temporal = nn.ModuleList()
        for d in DILATIONS:
            pad = (TEMPORAL_KERNEL + (TEMPORAL_KERNEL - 1) * (d - 1) - 1) // 2
            conv = nn.Conv2d(q, q, (TEMPORAL_KERNEL, 1), padding=(pad, 0), stride=(stride, 1), dilation=(d, 1))
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
            nn.init.zeros_(conv.bias)
            self.temporal.append(conv)
        self.point = _pointwise_layer(channels, q)
        # The four branch BatchNorms (dilated convs, max-pool, 1x1) act per channel, so they are
        # one BatchNorm applied after the concatenation.
        self.out_bn = nn.BatchNorm2d(channels)
        # Identity while training; the max-pool channels' share of out_bn once folded for inference
        # (a BatchNorm with a negative scale does not commute with max).
        self.pool_affine: nn.Module = nn.Identity()
        for m in (self.entry_bn, self.out_bn):
            _bn_init(m, None)

    def forward(self, x: Tensor, bn_mode: BatchNormMode = PLAIN_BATCHNORM) -> Tensor:
        """Channel-first ``(C, B, V, T)`` -> ``(C, B, V, T')``; ``bn_mode``: see ``_bn``."""
        q, stride = self.branch_channels, self.stride
        h = torch.relu_(_bn(self.entry_bn, _pointwise(self.entry, x), bn_mode))
        # split (not slicing): its backward is one concatenation, not a zero-filled buffer per slice.
        *branches, pool_in = h.split(q)
        outs = []
        for hi, conv in zip(branches, self.temporal):
            # oneDNN's convolution wants batch-first: transpose this branch's q channels only. The
            # kernel keeps upstream's (5, 1) shape and runs as (1, 5) here, time being last.
            out = F.conv2d(hi.transpose(0, 1).contiguous(), conv.weight.transpose(2, 3), conv.bias,
                           stride=(1, stride), padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]))
            outs.append(out.transpose(0, 1))
        outs.append(self.pool_affine(_max_pool_time(pool_in, stride)))
        outs.append(_pointwise(self.point, x[..., ::stride] if stride > 1 else x))
        return _bn(self.out_bn, torch.cat(outs, dim=0), bn_mode)


class Unit(nn.Module):
    """A TCN-GCN unit: spatial unit, temporal unit, unit residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: np.ndarray, stride: int, residual: bool):
        super().__init__()
        self.gcn = SpatialUnit(in_channels, out_channels, adjacency)
        self.tcn = TemporalUnit(out_channels, stride)
        self.stride = stride
        self.identity = residual and in_channels == out_channels and stride == 1
        if residual and not self.identity:
            self.residual = nn.Sequential(_pointwise_layer(in_channels, out_channels), nn.BatchNorm2d(out_channels))
            _bn_init(self.residual[1], 1.0)
        else:
            self.residual = None

    def forward(self, x: Tensor, bn_mode: BatchNormMode = PLAIN_BATCHNORM) -> Tensor:
        """Channel-first ``(C_in, B, V, T)`` -> ``(C_out, B, V, T')``; ``bn_mode``: see ``_bn``."""
        y = self.tcn(self.gcn(x, bn_mode), bn_mode)
        if self.residual is not None:
            xs = x[..., :: self.stride] if self.stride > 1 else x
            y = y + _bn(self.residual[1], _pointwise(self.residual[0], xs), bn_mode)
        elif self.identity:
            y = y + x
        return torch.relu_(y)


class CTRGCN(nn.Module):
    """CTR-GCN for inputs ``(N, C, T, V, M)``; ``forward`` returns logits ``(N, num_class)``.

    ``forward_features`` gives the last feature map ``(N, M, 256, T', V)``, ``pool`` turns it
    into the skeleton feature ``(N, 256)`` (mean over time, joints, then persons) and
    ``classify`` into logits, so one backbone pass serves both MMCL heads and the classifier.
    """

    def __init__(
        self,
        num_class: int,
        adjacency: np.ndarray,
        num_person: int = 2,
        in_channels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        adjacency = np.asarray(adjacency, dtype=np.float32)
        if adjacency.ndim != 3 or adjacency.shape[1] != adjacency.shape[2]:
            raise MMCLError(f"adjacency must have shape (subsets, V, V), got {adjacency.shape}")
        self.num_class, self.num_person, self.in_channels = num_class, num_person, in_channels
        self.num_point = adjacency.shape[-1]
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * self.num_point)
        _bn_init(self.data_bn, 1.0)
        self.layers = nn.ModuleList(
            Unit(in_channels if cin is None else cin, cout, adjacency, stride, residual)
            for cin, cout, stride, residual in _UNITS
        )
        self.feature_dim = _UNITS[-1][1]
        self.drop_out = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(self.feature_dim, num_class)
        nn.init.normal_(self.fc.weight, 0.0, math.sqrt(2.0 / num_class))
        nn.init.zeros_(self.fc.bias)
        # Training on CPU in float32/64: run one stream for all empty person slots of a batch
        # (see pooled_features). Off by default; ``mmcl train`` sets it from train.skip_empty_persons.
        self.skip_empty_persons = False
        # Training on CPU under torch.distributed: BatchNorm statistics over all processes' batches
        # (BatchNormMode.sync). Off by default; ``mmcl train`` sets it from train.sync_batchnorm.
        self.sync_batchnorm = False

    def _check(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[3] != self.num_point or x.shape[4] != self.num_person:
            raise MMCLError(
                f"CTRGCN expects input (N, C={self.in_channels}, T, V={self.num_point}, M={self.num_person}), "
                f"got {tuple(x.shape)}"
            )

    def embed(self, x: Tensor) -> Tensor:
        """Input ``(N, C, T, V, M)`` -> the data-normalised person streams ``(C, N*M, V, T)``
        (stream ``n * M + m`` is person ``m`` of sample ``n``)."""
        self._check(x)
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t)
        if self.data_bn.training and self._syncs(x):
            x = _bn_gathered(self.data_bn, x.unsqueeze(-1), t, BatchNormMode(sync=True)).squeeze(-1)
        else:
            x = self.data_bn(x)
        # Channel-first layout (C, N*M, V, T) from here on: see the module docstring.
        return x.view(n, m, v, c, t).permute(3, 0, 1, 2, 4).reshape(c, n * m, v, t)

    def backbone(self, streams: Tensor, last_count: int = 1) -> Tensor:
        """Person streams ``(C, B, V, T)`` -> feature maps ``(C_out, B, V, T')``. Streams never mix
        here (only the final pooling averages persons), so any subset of them can be run alone;
        in training they meet only in BatchNorm's statistics, which count the last stream
        ``last_count`` times (and, with ``sync_batchnorm``, span all processes)."""
        mode = BatchNormMode(last_count, self._syncs(streams))
        for layer in self.layers:
            streams = layer(streams, mode)
        return streams

    def _syncs(self, x: Tensor) -> bool:
        """Whether training BatchNorms gather statistics over all processes (see ``sync_batchnorm``)."""
        syncs = (
            self.sync_batchnorm and self.training and x.device.type == "cpu"
            and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )
        if syncs and (x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu")):
            raise MMCLError(
                f"train.sync_batchnorm on CPU processes needs float32 training, got {x.dtype} "
                f"(autocast {'on' if torch.is_autocast_enabled('cpu') else 'off'}); "
                "turn off mixed precision or sync_batchnorm"
            )
        return syncs

    def forward_features(self, x: Tensor) -> Tensor:
        """Input ``(N, C, T, V, M)`` -> feature map ``(N, M, C_out, T', V)`` before pooling."""
        n, _, _, v, m = x.shape
        y = self.backbone(self.embed(x))
        return y.view(y.shape[0], n, m, v, y.shape[3]).permute(1, 2, 0, 4, 3)

    def pooled_features(self, x: Tensor) -> Tensor:
        """Input ``(N, C, T, V, M)`` -> skeleton feature ``(N, C_out)``: ``pool(forward_features(x))``.

        With ``skip_empty_persons`` in training (on CPU, float32/64), all empty person slots of
        the batch (all-zero, e.g. no second actor) run as one stream. Their streams are
        identical: the data BatchNorm maps zeros to the same values in every sample, every
        later layer acts on each stream alone, and BatchNorm normalises all streams with the
        same batch statistics. So one copy is run, counted once per empty slot in the BatchNorm
        statistics (``last_count``), and its pooled feature is shared; its gradient is the sum
        of theirs. The result equals the full batch's up to float summation order.
        """
        empty = empty_person_slots(x) if self._skips_empty(x) else None
        count = 0 if empty is None else int(empty.sum())
        if empty is None or count < 2:  # (one empty stream costs what its copy would)
            return self.pool(self.forward_features(x))
        n, m = empty.shape
        streams = self.embed(x)
        slots = empty.reshape(-1)
        run = (~slots).nonzero().squeeze(1)
        order = torch.cat([run, slots.nonzero()[:1, 0]])  # the streams to run, one empty one last
        pooled = self.backbone(streams.index_select(1, order), last_count=count).mean(dim=(2, 3))
        where = torch.full_like(slots, len(run), dtype=torch.long)  # stream -> its column in pooled
        where[run] = torch.arange(len(run), device=x.device)
        return pooled.index_select(1, where).t().reshape(n, m, -1).mean(1)

    def _skips_empty(self, x: Tensor) -> bool:
        """Whether ``pooled_features`` shares empty slots for this input (see there)."""
        return (
            self.skip_empty_persons and self.training and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # (data-dependent stream counts would recompile)
        )

    def pool(self, features: Tensor) -> Tensor:
        """Feature map ``(N, M, C, T', V)`` -> skeleton feature ``(N, C)``: mean over T', V, then M."""
        return features.mean(dim=(3, 4)).mean(1)

    def classify(self, pooled: Tensor) -> Tensor:
        """Skeleton feature ``(N, C)`` -> logits ``(N, num_class)`` (dropout, then the classifier)."""
        return self.fc(self.drop_out(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.pooled_features(x))


def empty_person_slots(x: Tensor) -> Tensor:
    """``(N, M)`` bool: which person slots of the input ``(N, C, T, V, M)`` are all zero.
    Slot 0 (actor 1) never counts as empty."""
    n, c, t, v, m = x.shape
    empty = ~x.reshape(n, c * t * v, m).any(dim=1)
    empty[:, 0] = False
    return empty


# ----------------------------------------------------------------------------------------------
# Upstream checkpoints


def load_upstream_state_dict(model: CTRGCN, state: Mapping[str, Tensor], strict: bool = True) -> None:
    """Load a state dict of the original CTR-GCN code (``l1.gcn1.convs.0.conv1.weight`` ...).

    A ``module.`` prefix (``nn.DataParallel``) is stripped. Raises MMCLError naming missing or
    unexpected keys.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    ours: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in state:
            raise MMCLError(f"upstream checkpoint has no key {key!r}")
        used.add(key)
        return state[key]

    def bn(dst: str, src: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{src}.{name}" in state:
                ours[f"{dst}.{name}"] = take(f"{src}.{name}")

    def cat_bn(dst: str, srcs: list[str]) -> None:
        """Several upstream BatchNorms concatenated into one (they act per channel)."""
        for name in ("weight", "bias", "running_mean", "running_var"):
            ours[f"{dst}.{name}"] = torch.cat([take(f"{src}.{name}") for src in srcs])
        tracked = [f"{src}.num_batches_tracked" for src in srcs if f"{src}.num_batches_tracked" in state]
        if tracked:
            ours[f"{dst}.num_batches_tracked"] = take(tracked[0])
            used.update(tracked)

    def conv(dst: str, src: str) -> None:
        ours[f"{dst}.weight"] = take(f"{src}.weight").reshape(expected[f"{dst}.weight"].shape)
        ours[f"{dst}.bias"] = take(f"{src}.bias")

    bn("data_bn", "data_bn")
    ours["fc.weight"], ours["fc.bias"] = take("fc.weight"), take("fc.bias")
    for i, layer in enumerate(model.layers):
        src, dst = f"l{i + 1}", f"layers.{i}"
        gcn = layer.gcn
        s, c, r = gcn.subsets, gcn.out_channels, gcn.rel_channels
        subs = [f"{src}.gcn1.convs.{k}" for k in range(s)]
        w1 = [take(f"{p}.conv1.weight").reshape(r, -1) for p in subs]
        w2 = [take(f"{p}.conv2.weight").reshape(r, -1) for p in subs]
        ours[f"{dst}.gcn.rel_weight"] = torch.cat(w1 + w2)
        ours[f"{dst}.gcn.rel_bias"] = torch.cat([take(f"{p}.conv1.bias") for p in subs] + [take(f"{p}.conv2.bias") for p in subs])
        ours[f"{dst}.gcn.value_weight"] = torch.cat([take(f"{p}.conv3.weight").reshape(c, -1) for p in subs])
        ours[f"{dst}.gcn.value_bias"] = torch.cat([take(f"{p}.conv3.bias") for p in subs])
        ours[f"{dst}.gcn.expand_weight"] = torch.stack([take(f"{p}.conv4.weight").reshape(c, r) for p in subs])
        ours[f"{dst}.gcn.expand_bias"] = torch.stack([take(f"{p}.conv4.bias") for p in subs])
        ours[f"{dst}.gcn.PA"] = take(f"{src}.gcn1.PA")
        ours[f"{dst}.gcn.alpha"] = take(f"{src}.gcn1.alpha")
        bn(f"{dst}.gcn.bn", f"{src}.gcn1.bn")
        if gcn.down is not None:
            conv(f"{dst}.gcn.down.0", f"{src}.gcn1.down.0")
            bn(f"{dst}.gcn.down.1", f"{src}.gcn1.down.1")
        br = f"{src}.tcn1.branches"
        nd = len(DILATIONS)
        entry = [f"{br}.{k}.0" for k in range(nd + 1)]
        ours[f"{dst}.tcn.entry.weight"] = torch.cat([take(f"{p}.weight").flatten(1) for p in entry])
        ours[f"{dst}.tcn.entry.bias"] = torch.cat([take(f"{p}.bias") for p in entry])
        cat_bn(f"{dst}.tcn.entry_bn", [f"{br}.{k}.1" for k in range(nd + 1)])
        for k in range(nd):
            conv(f"{dst}.tcn.temporal.{k}", f"{br}.{k}.3.conv")
        conv(f"{dst}.tcn.point", f"{br}.{nd + 1}.0")
        out_bns = [f"{br}.{k}.3.bn" for k in range(nd)] + [f"{br}.{nd}.4", f"{br}.{nd + 1}.1"]
        cat_bn(f"{dst}.tcn.out_bn", out_bns)
        if layer.residual is not None:
            conv(f"{dst}.residual.0", f"{src}.residual.conv")
            bn(f"{dst}.residual.1", f"{src}.residual.bn")
    unexpected = sorted(set(state) - used)
    if strict and unexpected:
        raise MMCLError(f"upstream checkpoint has keys this model does not use: {unexpected[:8]}")
    for key, value in ours.items():
        if key in expected and expected[key].shape != value.shape:
            raise MMCLError(
                f"upstream checkpoint key for {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)} (class count, channels or joints differ?)"
            )
    missing, _ = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if strict and missing:
        raise MMCLError(f"upstream checkpoint lacks weights for {missing[:8]}")
