"""CTR-GCN (fused, channel-first) against a straightforward reference, the MMCL heads and wrapper,
fast inference, and the Transformers image encoder. Small shapes: the file runs in seconds."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmcl.models.ctrgcn as ctrgcn_module
from mmcl.errors import MMCLError
from mmcl.graphs import get_layout
from mmcl.models import (
    CTRGCN,
    FAM,
    FRM,
    LossWeights,
    MMCLModel,
    contrastive_loss,
    fold_batchnorm,
    load_image_encoder,
    load_upstream_state_dict,
    optimize_for_inference,
)
from mmcl.models.inference import EmptySlotSkipper, missing_compile_toolchain

REPO = Path(__file__).resolve().parents[1]
T = 16  # frames: small, still divisible by the two stride-2 units


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are tiny, and on a shared 2-core machine a second OpenMP
    thread that waits for a busy core makes each op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _upstream_module():
    """benchmarks/_upstream_ctrgcn.py: the original architecture written plainly (per-subset convs, einsum)."""
    path = REPO / "benchmarks" / "_upstream_ctrgcn.py"
    spec = importlib.util.spec_from_file_location("_upstream_ctrgcn", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_upstream_ctrgcn", module)
    spec.loader.exec_module(module)
    return module


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter and BN statistic off its init so all paths carry signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.7)
            elif "bn" in name and name.endswith("weight") or name.endswith("down.1.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 - 0.3)  # some negative scales too
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def ntu_pair():
    """(reference, ours) in float64 with the same weights, loaded through load_upstream_state_dict."""
    torch.manual_seed(0)
    upstream = _upstream_module()
    adjacency = get_layout("ntu").adjacency()
    ref = upstream.UpstreamCTRGCN(120, adjacency)
    _perturb(ref)
    ours = CTRGCN(120, adjacency)
    load_upstream_state_dict(ours, ref.state_dict())
    return ref.double(), ours.double()


# -- the backbone --------------------------------------------------------------------------


def test_parameter_count_matches_upstream():
    adjacency = get_layout("ntu").adjacency()
    ours = CTRGCN(120, adjacency, num_person=2, in_channels=3)
    ref = _upstream_module().UpstreamCTRGCN(120, adjacency)
    assert sum(p.numel() for p in ours.parameters()) == 1_462_092
    assert sum(p.numel() for p in ref.parameters()) == 1_462_092
    # The fused BatchNorms keep every upstream running statistic too.
    count = lambda m, key: sum(b.numel() for n, b in m.named_buffers() if n.endswith(key))  # noqa: E731
    assert count(ours, "running_var") == count(ref, "running_var")


@pytest.mark.parametrize(
    ("layout", "persons", "classes"), [("ntu", 2, 60), ("ucla", 1, 10), ("utd-mhad", 1, 27)]
)
def test_forward_shapes(layout, persons, classes):
    lay = get_layout(layout)
    model = CTRGCN(classes, lay.adjacency(), num_person=persons)
    x = torch.randn(2, 3, T, lay.num_joints, persons)
    features = model.forward_features(x)
    assert features.shape == (2, persons, 256, T // 4, lay.num_joints)
    pooled = model.pool(features)
    assert pooled.shape == (2, 256)
    torch.testing.assert_close(pooled, features.mean(dim=(3, 4)).mean(1))
    logits = model.classify(pooled)
    assert logits.shape == (2, classes)
    torch.testing.assert_close(model(x), logits)


def test_bad_input_shape_is_a_clear_error():
    model = CTRGCN(10, get_layout("ucla").adjacency(), num_person=1)
    with pytest.raises(MMCLError, match=r"V=20, M=1"):
        model(torch.randn(2, 3, T, 25, 2))
    with pytest.raises(MMCLError, match="adjacency"):
        CTRGCN(10, np.eye(20))


def test_adjacency_partitions_seed_the_learnable_graphs():
    layout = get_layout("ntu")
    a = layout.adjacency()
    assert a.shape == (3, 25, 25)
    np.testing.assert_array_equal(a[0], np.eye(25))
    for part in a[1:]:  # inward / outward, column-normalised
        sums = part.sum(0)
        assert np.allclose(sums[sums > 0], 1.0)
    np.testing.assert_array_equal(a[1] > 0, (a[2] > 0).T)  # outward is inward reversed
    model = CTRGCN(60, a)
    for unit in model.layers:
        np.testing.assert_array_equal(unit.gcn.PA.detach().numpy(), a)
        assert unit.gcn.PA.requires_grad


def test_initialisation_follows_upstream():
    torch.manual_seed(1)
    model = CTRGCN(120, get_layout("ntu").adjacency())
    for unit in model.layers:
        gcn, tcn = unit.gcn, unit.tcn
        assert gcn.alpha.item() == 0.0
        assert torch.all(gcn.bn.weight == 1e-6) and torch.all(gcn.bn.bias == 0)
        c = gcn.out_channels
        # Kaiming fan-out of each unfused conv3 (fan_out = C), not of the fused 3C rows.
        assert gcn.value_weight.std().item() == pytest.approx(math.sqrt(2 / c), rel=0.1)
        assert torch.all(gcn.value_bias == 0)
        # The multi-scale temporal unit's BatchNorms: weight ~ N(1, 0.02), bias 0.
        for bn in (tcn.entry_bn, tcn.out_bn):
            assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.02)
            assert 0.005 < bn.weight.std().item() < 0.05
            assert torch.all(bn.bias == 0)
        if unit.residual is not None:
            assert torch.all(unit.residual[1].weight == 1)
    assert torch.all(model.data_bn.weight == 1)
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 120), rel=0.05)
    assert torch.all(model.fc.bias == 0)


@pytest.mark.parametrize("per_subset", [False, True], ids=["stacked-subsets", "per-subset-tensors"])
def test_fused_model_equals_reference_forward_and_backward(ntu_pair, per_subset, monkeypatch):
    # Both ways of holding the spatial unit's subsets: stacked (small batches) and one tensor
    # per subset (when stacked they would exceed FRESH_MAP_BYTES, as at batch 16).
    monkeypatch.setattr(ctrgcn_module, "FRESH_MAP_BYTES", 0 if per_subset else 2**62)
    ref, ours = ntu_pair
    x = torch.randn(2, 3, T, 25, 2, dtype=torch.float64)
    labels = torch.tensor([3, 77])
    for mode in ("train", "eval"):
        ref.train(mode == "train")
        ours.train(mode == "train")
        ref.zero_grad()
        ours.zero_grad()
        a, b = ref(x), ours(x)
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * a.abs().max().item())
    # Gradients (train mode): mapped through the same layout as the weights.
    ref.train()
    ours.train()
    ref.zero_grad()
    ours.zero_grad()
    F.cross_entropy(ref(x), labels).backward()
    F.cross_entropy(ours(x), labels).backward()
    grads = {n: b for n, b in ref.named_buffers()}  # buffers ride along, unused
    grads.update({n: p.grad for n, p in ref.named_parameters()})
    mapped = {}
    load_upstream_state_dict(_GradView(mapped), grads)
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, mapped[name].view_as(p.grad), rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("frames", [8, 9])
def test_time_max_pool_routes_gradients_as_max_pooling(stride, frames):
    # The CPU training pooling (forward without indices, its own backward) against PyTorch's
    # max-pooling with indices, on values with many ties (as ReLU's zeros give): the same output,
    # and each window's gradient goes to its first maximum.
    torch.manual_seed(0)
    x = torch.randint(0, 3, (2, 3, 4, frames)).double()  # (C, B, V, T)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ctrgcn_module._max_pool_time(ours, stride)
    expected = F.max_pool2d(theirs.view(24, 1, frames, 1), (3, 1), (stride, 1), (1, 0)).view(2, 3, 4, -1)
    assert torch.equal(out, expected)
    upstream = torch.randn_like(expected)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(ctrgcn_module._max_pool_time(x, stride), expected)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_batchnorm_with_repeated_last_stream_equals_explicit_copies(momentum):
    # _bn with last_count=k: BatchNorm as if x's last stream were there k times.
    torch.manual_seed(0)
    c, b, t, v, k = 4, 3, 5, 6, 4
    x = torch.randn(c, b, t, v, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(c, b + k - 1, t, v, dtype=torch.float64)  # one gradient per copy
    bns = []
    for _ in range(2):
        bn = torch.nn.BatchNorm2d(c, momentum=momentum).double()
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.5, -0.5, 0.8, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
        bn.num_batches_tracked.fill_(3)
        bns.append(bn)
    copies = torch.cat([x, x[:, -1:].expand(c, k - 1, t, v)], dim=1)
    expected = ctrgcn_module._bn(bns[0], copies)
    (expected * upstream).sum().backward()
    expected_grad, x.grad = x.grad, None
    got = ctrgcn_module._bn(bns[1], x, ctrgcn_module.BatchNormMode(last_count=k))
    torch.testing.assert_close(got, expected[:, :b], rtol=1e-12, atol=1e-12)
    # The last stream stands for its copies: its gradient is the sum of theirs.
    summed = torch.cat([upstream[:, : b - 1], upstream[:, b - 1 :].sum(1, keepdim=True)], dim=1)
    (got * summed).sum().backward()
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-10, atol=1e-12)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(bns[1], name).grad, getattr(bns[0], name).grad, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bns[1], name), getattr(bns[0], name), rtol=1e-12, atol=1e-12)


def test_training_runs_all_empty_person_slots_as_one_stream(ntu_pair):
    # skip_empty_persons: a training step is the full batch's step, with fewer streams run.
    _, ours = ntu_pair
    torch.manual_seed(1)
    x = torch.randn(6, 3, T, 25, 2, dtype=torch.float64)
    x[[0, 2, 3, 5], :, :, :, 1] = 0  # four one-actor samples
    labels = torch.tensor([3, 77, 5, 0, 119, 42])
    results = {}
    for skip in (False, True):
        model = copy.deepcopy(ours).train()
        model.skip_empty_persons = skip
        streams: list[int] = []
        model.layers[0].register_forward_pre_hook(lambda _m, args: streams.append(args[0].shape[1]))
        logits = model(x)
        F.cross_entropy(logits, labels).backward()
        results[skip] = (streams, logits, model)
    (full_streams, expected, full), (shared_streams, got, shared) = results[False], results[True]
    assert full_streams == [12] and shared_streams == [12 - 4 + 1]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    # (biases before a training BatchNorm have zero gradient, so compare against the largest one)
    scale = max(p.grad.abs().max().item() for p in full.parameters())
    for (name, p), q in zip(full.named_parameters(), shared.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-11 * scale, msg=name)
    for (name, b), d in zip(full.named_buffers(), shared.buffers()):
        torch.testing.assert_close(d, b, rtol=1e-9, atol=1e-12, msg=name)
    # At most one empty slot: nothing to share, the batch runs in full; eval mode never shares
    # here (optimize_for_inference skips empty slots at test time).
    x[[2, 3, 5], :, :, :, 1] = 1.0
    shared(x)
    x[[2, 3, 5], :, :, :, 1] = 0.0
    shared.eval()
    shared(x)
    assert shared_streams == [9, 12, 12]
    assert not CTRGCN(60, get_layout("ntu").adjacency()).skip_empty_persons  # opt-in outside mmcl train


class _GradView(CTRGCN):
    """Captures what load_upstream_state_dict would load, to map reference gradients onto ours."""

    def __init__(self, sink: dict):
        super().__init__(120, get_layout("ntu").adjacency())
        self._sink = sink

    def load_state_dict(self, state, strict=True, assign=False):  # noqa: D401 - capture only
        self._sink.update(state)
        return [], []


def test_upstream_checkpoint_errors_name_the_problem(ntu_pair):
    ref, _ = ntu_pair
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # DataParallel prefix is fine
    load_upstream_state_dict(CTRGCN(120, get_layout("ntu").adjacency()), state)
    with pytest.raises(MMCLError, match=r"fc\.weight.*shape"):
        load_upstream_state_dict(CTRGCN(60, get_layout("ntu").adjacency()), state)
    state.pop("module.l3.gcn1.convs.1.conv3.weight")
    with pytest.raises(MMCLError, match="l3.gcn1.convs.1.conv3.weight"):
        load_upstream_state_dict(CTRGCN(120, get_layout("ntu").adjacency()), state)


def test_optimized_inference_equals_eval_forward(ntu_pair):
    _, ours = ntu_pair
    ours.eval()
    x = torch.randn(5, 3, T, 25, 2, dtype=torch.float64)
    expected = ours(x)
    predict = optimize_for_inference(ours, chunk=2)  # 3 chunks: 2 + 2 + 1
    torch.testing.assert_close(predict(x), expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    # one-actor samples: slot 2 all zero is not computed, and gives the same logits
    x[[0, 2, 3], :, :, :, 1] = 0
    x[4, :, :, :, 0] = 0  # an empty actor-1 slot is still run
    expected = ours(x)
    torch.testing.assert_close(predict(x), expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    torch.testing.assert_close(predict(x[:1]), expected[:1], rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    streams_run: list[int] = []
    backbone = predict.model.backbone
    predict.model.backbone = lambda s: streams_run.append(s.shape[1]) or backbone(s)
    predict(x)  # chunks of 2 samples = 4 streams, 3 of 10 streams empty (the constant is cached)
    assert streams_run == [3, 2, 2]
    folded = fold_batchnorm(ours)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.layers.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ours.layers.modules())  # untouched


def test_bf16_inference_keeps_the_predictions():
    """``dtype=torch.bfloat16`` runs the folded model in bf16 (weights and activations, no fp32
    copy left inside), empty slots skipped as in fp32, and hands back float32 logits."""
    torch.manual_seed(3)
    model = CTRGCN(10, get_layout("ntu").adjacency())
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.data.fill_(0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model(torch.randn(8, 3, T, 25, 2))  # running statistics that fit the data
    model.eval()
    x = torch.randn(6, 3, T, 25, 2)
    x[[1, 4], :, :, :, 1] = 0
    expected = optimize_for_inference(model)(x)
    low = optimize_for_inference(model, dtype=torch.bfloat16)
    streams_run: list[int] = []
    backbone = low.model.backbone
    low.model.backbone = lambda s: streams_run.append(s.shape[1]) or backbone(s)
    got = low(x)
    # One chunk (bf16 chunks hold CPU_CHUNK_REDUCED_PRECISION samples, float32 ones CPU_CHUNK = 4)
    # of 12 - 2 streams, and the empty slot's constant once.
    assert sorted(streams_run) == [1, 12 - 2]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert 1e-5 < (got - expected).abs().max() <= 0.03 * expected.abs().max()  # bf16 ran, and is close
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    assert model.fc.weight.dtype == torch.float32  # the original is untouched
    with pytest.raises(MMCLError, match="floating-point"):
        optimize_for_inference(model, dtype=torch.int8)


@pytest.mark.skipif(
    missing_compile_toolchain() is not None, reason=f"torch.compile's CPU backend needs {missing_compile_toolchain()}"
)
def test_compiled_inference_equals_eager():
    """``compile=True`` runs inductor's frozen graphs on CPU (the whole forward for inputs without
    empty slots, the backbone on the actors' streams otherwise) and gives the eager logits."""
    from torch._dynamo.utils import counters

    torch.manual_seed(1)
    model = CTRGCN(120, get_layout("ntu").adjacency())  # float32, as users run it
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            p.data.fill_(0.5)  # the learned topology term carries signal
    for m in model.modules():  # running statistics that fit the data: a well-conditioned network
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model(torch.randn(4, 3, T, 25, 2))
    model.eval()
    x = torch.randn(2, 3, T, 25, 2)
    x[1, :, :, :, 1] = 0  # sample 2 has one actor: its empty slot is skipped as in eager
    eager = optimize_for_inference(model)
    compiled = optimize_for_inference(model, compile=True)
    counters.clear()
    for sample in (x[:1], x[1:], x):  # whole forward; backbone on 1 stream (+ the empty slot's constant); on 3
        expected = eager(sample)
        torch.testing.assert_close(compiled(sample), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert counters["stats"]["unique_graphs"] == 3  # one graph per shape: it did compile


def test_whole_forward_runs_only_inputs_without_empty_slots():
    """The compiled path's whole-forward graph gets inputs with every slot filled; an input with
    an empty slot goes through the backbone on its actors' streams instead."""
    model = CTRGCN(10, get_layout("ntu").adjacency()).eval()
    seen = []

    def whole(x):
        seen.append(x.shape[0])
        return model(x)

    skipper = EmptySlotSkipper(model, whole=whole)
    x = torch.randn(2, 3, T, 25, 2)
    with torch.no_grad():
        torch.testing.assert_close(skipper(x), model(x))
        assert seen == [2]
        x[1, :, :, :, 1] = 0
        torch.testing.assert_close(skipper(x), model(x), rtol=1e-4, atol=1e-5)
    assert seen == [2]  # not called for the input with an empty slot


def test_compiled_inference_without_toolchain_says_what_is_missing(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    model = CTRGCN(10, get_layout("ntu").adjacency()).eval()
    with pytest.raises(MMCLError, match=r"needs a C\+\+ compiler .*compile=False"):
        optimize_for_inference(model, compile=True)
    assert optimize_for_inference(model)(torch.randn(1, 3, T, 25, 2)).shape == (1, 10)  # eager still works


# -- the heads ------------------------------------------------------------------------------


def _explicit_contrastive(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """The FAM loss written out term by term, in float64."""
    a = [v / v.norm() for v in a.double()]
    b = [v / v.norm() for v in b.double()]
    n = len(a)
    sim = lambda u, v: math.exp(float(u @ v) / tau)  # noqa: E731
    total = 0.0
    for anchors, others in ((a, b), (b, a)):
        for i in range(n):
            positive = sim(anchors[i], others[i])
            denominator = sum(sim(anchors[i], others[j]) for j in range(n))
            denominator += sum(sim(anchors[i], anchors[j]) for j in range(n) if j != i)
            total += -math.log(positive / denominator)
    return total / (2 * n)


def test_fam_loss_matches_explicit_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    for tau in (0.4, 1.0):
        assert contrastive_loss(a, b, tau).item() == pytest.approx(_explicit_contrastive(a, b, tau), rel=1e-5)
    # Aligned pairs score lower than shuffled ones.
    assert contrastive_loss(a, a + 0.01 * b).item() < contrastive_loss(a, b).item()
    fam = FAM(rgb_dim=512)
    assert [type(m).__name__ for m in fam.mlp] == ["Linear", "ReLU", "Linear"]
    assert fam.mlp[0].in_features == 512 and fam.mlp[2].out_features == 256
    assert fam(torch.randn(3, 512)).shape == (3, 256)
    with pytest.raises(MMCLError, match="shape"):
        contrastive_loss(torch.randn(3, 8), torch.randn(4, 8))


def test_frm_refined_score_formula():
    torch.manual_seed(0)
    frm = FRM(text_dim=32, num_class=7)
    with torch.no_grad():
        frm.pos.copy_(torch.rand(7) + 0.5)
        frm.neg.copy_(torch.rand(7) - 0.5)
    logits, text = torch.randn(4, 7), torch.randn(4, 32)
    w = torch.softmax(frm.mlp(text), dim=-1)
    p, n = w[:, 0:1], w[:, 1:2]
    expected = p * frm.pos * logits + n * frm.neg * logits
    torch.testing.assert_close(frm(logits, text), expected)
    assert torch.all(FRM(32, 7).pos == 1) and torch.all(FRM(32, 7).neg == 1)
    assert FRM(32, 60).pos.shape == (60,)  # sized from the dataset, not 120
    with pytest.raises(MMCLError, match="7 classes"):
        frm(torch.randn(4, 9), text)


# -- the wrapper ----------------------------------------------------------------------------


def _small_backbone(classes: int = 10) -> CTRGCN:
    return CTRGCN(classes, get_layout("ucla").adjacency(), num_person=1)


def _batch(n: int = 4, classes: int = 10):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, T, 20, 1, generator=g)
    return x, torch.randn(n, 48, generator=g), torch.randn(n, 24, generator=g), torch.arange(n) % classes


def test_heads_off_is_plain_ctrgcn():
    torch.manual_seed(0)
    backbone = _small_backbone().eval()
    x, rgb, text, labels = _batch()
    model = MMCLModel(backbone, rgb_dim=None, text_dim=None).eval()
    out = model(x, rgb=rgb, text=text)
    assert set(out) == {"logits", "skeleton_feature"}
    torch.testing.assert_close(out["logits"], backbone(x))
    losses = model.losses(out, labels)
    assert set(losses) == {"ce", "total"}
    torch.testing.assert_close(losses["total"], F.cross_entropy(backbone(x), labels))


def test_heads_on_outputs_and_loss_weights():
    torch.manual_seed(0)
    backbone = _small_backbone()
    model = MMCLModel(backbone, rgb_dim=48, text_dim=24).eval()
    x, rgb, text, labels = _batch()
    out = model(x, rgb=rgb, text=text)
    assert out["rgb_embedding"].shape == out["skeleton_feature"].shape == (4, 256)
    assert out["refined"].shape == out["logits"].shape == (4, 10)
    torch.testing.assert_close(out["logits"], backbone(x))  # the heads do not touch the logits
    losses = model.losses(out, labels)
    ce = F.cross_entropy(out["logits"], labels)
    refined = F.cross_entropy(out["refined"], labels)
    contrast = contrastive_loss(out["skeleton_feature"], out["rgb_embedding"], 0.4)
    torch.testing.assert_close(losses["total"], ce + 0.2 * refined + 0.1 * contrast)
    custom = model.losses(out, labels, LossWeights(ce=0.5, refine=1.0, contrast=2.0))
    torch.testing.assert_close(custom["total"], 0.5 * ce + refined + 2.0 * contrast)
    # Evaluation without RGB or text: skeleton only.
    assert set(model(x)) == {"logits", "skeleton_feature"}


def test_gradients_reach_heads_and_backbone():
    torch.manual_seed(0)
    model = MMCLModel(_small_backbone(), rgb_dim=48, text_dim=24).train()
    x, rgb, text, labels = _batch()
    model.losses(model(x, rgb=rgb, text=text), labels)["total"].backward()
    for name in ("fam.mlp.0.weight", "fam.mlp.2.weight", "frm.mlp.0.weight", "frm.pos", "frm.neg",
                 "backbone.fc.weight", "backbone.layers.0.gcn.value_weight", "backbone.layers.9.gcn.PA"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_skeleton_model_has_no_head_parameters():
    backbone = CTRGCN(120, get_layout("ntu").adjacency())
    model = MMCLModel(backbone, rgb_dim=512, text_dim=768)
    skeleton = model.skeleton_model()
    assert skeleton is backbone
    assert sum(p.numel() for p in skeleton.parameters()) == 1_462_092
    assert not any(k.startswith(("fam", "frm", "rgb_encoder")) for k in skeleton.state_dict())
    assert sum(p.numel() for p in model.parameters()) > 1_462_092


def test_bf16_autocast_trains_and_keeps_the_logits():
    """Accelerate's bf16 mixed precision wraps the step in autocast: the model must run under it
    (fp32 master weights and gradients) and give the fp32 logits to bf16 precision."""
    torch.manual_seed(0)
    model = MMCLModel(_small_backbone(), rgb_dim=48, text_dim=24)
    x, rgb, text, labels = _batch(2)
    model.eval()
    with torch.no_grad():
        expected = model(x)["logits"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)["logits"].float()
    assert (low - expected).abs().max() <= 0.02 * expected.abs().max()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.losses(model(x, rgb, text), labels)
    assert losses["total"].dtype == torch.float32 and torch.isfinite(losses["total"])
    losses["total"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


# -- the end-to-end image encoder -----------------------------------------------------------


def _tiny_vit(path: Path) -> Path:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64)
    ViTModel(config).save_pretrained(path)
    return path


def test_image_encoder_vit_and_resnet(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    vit = load_image_encoder(str(_tiny_vit(tmp_path / "vit")))
    assert vit.feature_dim == 32 and vit.image_size == 32
    assert vit(torch.randn(3, 3, 32, 32)).shape == (3, 32)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(
        tmp_path / "resnet"
    )
    resnet = load_image_encoder(str(tmp_path / "resnet"))
    assert resnet.feature_dim == 16
    assert resnet(torch.randn(2, 3, 64, 96)).shape == (2, 16)  # strips may be wide


def test_image_encoder_clip_uses_image_features(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 32},
        projection_dim=12,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    clip = load_image_encoder(str(tmp_path / "clip"))
    assert clip.feature_dim == 12  # the projected image embedding
    assert clip(torch.randn(2, 3, 32, 32)).shape == (2, 12)


def test_end_to_end_rgb_encoder_trains_with_fam(tmp_path):
    torch.manual_seed(0)
    encoder = load_image_encoder(str(_tiny_vit(tmp_path / "vit")))
    model = MMCLModel(_small_backbone(), rgb_dim=None, text_dim=None, rgb_encoder=encoder).train()
    x, _, _, labels = _batch()
    out = model(x, rgb=torch.randn(4, 3, 32, 32))
    assert out["rgb_embedding"].shape == (4, 256)
    losses = model.losses(out, labels)
    assert set(losses) == {"ce", "contrastive", "total"}
    losses["total"].backward()
    assert encoder.model.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert not any(k.startswith("rgb_encoder") for k in model.skeleton_model().state_dict())


def test_missing_image_encoder_says_how_to_get_it(tmp_path):
    with pytest.raises(MMCLError, match="does not exist"):
        load_image_encoder(str(tmp_path / "nope"))
    with pytest.raises(MMCLError, match="huggingface-cli download"):
        load_image_encoder("mmcl-test-nobody/no-such-model")
