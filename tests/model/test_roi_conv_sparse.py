"""The gathered ("sparse") ROI convolution and the head's sparse path against the dense/reference
ones: outputs and gradients equal, exact zeros outside the ROIs, gradcheck, and "auto"'s choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src_model.config import get_preset
from src_model.geometry import GridGeometry
from src_model.head import FCNHead
from src_model.model import build_model
from src_model.roi_conv import (
    AUTO_SPARSE_BELOW,
    RoiConv2d,
    active_cells,
    choose_impl,
    roi_conv2d,
    roi_conv2d_gathered,
    roi_conv2d_reference,
)
from src_model.roi_conv_sparse import conv_out_size as _out

CONV_CASES = [  # (kernel, stride, padding, dilation)
    (7, 1, 0, 1),
    (7, 1, 3, 1),
    (3, 1, 1, 1),
    (1, 1, 0, 1),
    (3, 2, 1, 1),
    (3, 1, 2, 2),
]




def _random_boxes_mask(g, n, ho, wo, boxes_per_image=(2, 0, 1, 3)) -> torch.Tensor:
    """Union of random cell rectangles per image (some at the borders, one image without any)."""
    mask = torch.zeros(n, 1, ho, wo, dtype=torch.bool)
    for i in range(n):
        for _ in range(boxes_per_image[i % len(boxes_per_image)]):
            r0 = int(torch.randint(-2, ho, (1,), generator=g))
            c0 = int(torch.randint(-2, wo, (1,), generator=g))
            r1 = r0 + int(torch.randint(1, ho + 1, (1,), generator=g))
            c1 = c0 + int(torch.randint(1, wo + 1, (1,), generator=g))
            mask[i, 0, max(r0, 0) : r1, max(c0, 0) : c1] = True  # clipped at the borders
    return mask


def _case(k, s, p, d, seed, dtype=torch.float32, n=4, cin=3, cout=5, h=13, w=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    mask = _random_boxes_mask(g, n, _out(h, k, s, p, d), _out(w, k, s, p, d))
    return x, weight, bias, mask


def _run(fn, x, weight, bias, mask, upstream, **kw):
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    out = fn(*leaves, mask, **kw)
    (out * upstream).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _close(got, want, rel=1e-5):
    """Equal to ``rel`` of the largest magnitude (float32 sums of hundreds of terms in another
    order differ by a few ulps of the largest term, not of each element)."""
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


def _assert_same(sparse, dense, rel=1e-5):
    (out_s, grads_s), (out_d, grads_d) = sparse, dense
    _close(out_s, out_d, rel)
    for got, want in zip(grads_s, grads_d):  # input, weight, bias
        _close(got, want, rel)


@pytest.mark.parametrize("k,s,p,d", CONV_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_matches_dense_outputs_and_gradients(k, s, p, d, seed):
    x, weight, bias, mask = _case(k, s, p, d, seed)
    upstream = torch.randn(x.shape[0], weight.shape[0], *mask.shape[-2:])
    kw = {"stride": s, "padding": p, "dilation": d}
    sparse = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="sparse", **kw)
    dense = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="dense", **kw)
    _assert_same(sparse, dense)
    assert torch.count_nonzero(sparse[0][~mask.expand_as(sparse[0])]) == 0


@pytest.mark.parametrize("k,s,p,d", [(7, 1, 0, 1), (7, 1, 3, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_sparse_matches_reference_in_float64(k, s, p, d):
    x, weight, bias, mask = _case(k, s, p, d, seed=5, dtype=torch.float64, n=2)
    upstream = torch.randn(x.shape[0], weight.shape[0], *mask.shape[-2:], dtype=x.dtype)
    kw = {"stride": s, "padding": p, "dilation": d}
    sparse = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="sparse", **kw)
    reference = _run(roi_conv2d_reference, x, weight, bias, mask, upstream, **kw)
    _assert_same(sparse, reference, rel=1e-10)


@pytest.mark.parametrize("coverage", ["full", "one_cell", "empty"])
def test_sparse_full_single_and_empty_masks(coverage):
    x, weight, bias, mask = _case(7, 1, 3, 1, seed=3)
    mask = torch.full_like(mask, coverage == "full")
    if coverage == "one_cell":
        mask[1, 0, -1, 0] = True  # bottom-left corner: the window reads the padding
    upstream = torch.randn(x.shape[0], weight.shape[0], *mask.shape[-2:])
    sparse = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="sparse", padding=3)
    dense = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="dense", padding=3)
    _assert_same(sparse, dense)
    if coverage == "empty":
        assert all(torch.count_nonzero(g) == 0 for g in [sparse[0], *sparse[1]])


def test_sparse_both_gather_layouts_and_channels_last_input():
    """Few cells use the (C, kh, kw) gather, many the channels-last one; a channels_last input
    gives the same numbers and a gradient in its own memory format."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 9, 8, generator=g)
    weight = torch.randn(6, 4, 3, 3, generator=g)
    bias = torch.randn(6, generator=g)
    for n_active in (3, 60):  # below / above C_out = 6 cells
        mask = torch.zeros(2, 1, 9, 8, dtype=torch.bool)
        mask.view(-1)[torch.randperm(mask.numel(), generator=g)[:n_active]] = True
        upstream = torch.randn(2, 6, 9, 8, generator=g)
        dense = _run(roi_conv2d, x, weight, bias, mask, upstream, impl="dense", padding=1)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            xm = x.contiguous(memory_format=memory_format)
            sparse = _run(roi_conv2d, xm, weight, bias, mask, upstream, impl="sparse", padding=1)
            _assert_same(sparse, dense)
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    roi_conv2d(xl, weight, bias, mask, padding=1, impl="sparse").sum().backward()
    assert xl.grad.is_contiguous(memory_format=torch.channels_last)


def test_sparse_gradcheck_float64():
    x, weight, bias, mask = _case(3, 1, 1, 1, seed=6, dtype=torch.float64, n=2, cin=2, cout=2,
                                  h=5, w=4)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda a, b, c: roi_conv2d(a, b, c, mask, padding=1, impl="sparse"), inputs
    )
    mask2 = torch.ones(2, 1, 3, 2, dtype=torch.bool)
    mask2[0, 0, 1, 1] = False
    assert torch.autograd.gradcheck(  # stride 2, dilation 2, bias-free, through the gathered form
        lambda a, b: roi_conv2d_gathered(a, b, None, active_cells(mask2), stride=2, padding=2,
                                         dilation=2),
        inputs[:2],
    )


def test_gathered_rows_are_the_conv_at_the_cells_and_no_bias_works():
    x, weight, _, mask = _case(3, 2, 1, 1, seed=7)
    cells = active_cells(mask)
    rows = roi_conv2d_gathered(x, weight, None, cells, stride=2, padding=1)
    plain = F.conv2d(x, weight, stride=2, padding=1)
    n, r, c = cells.unbind(1)
    torch.testing.assert_close(rows, plain[n, :, r, c], rtol=1e-5, atol=1e-5)


def test_auto_chooses_by_coverage_and_module_accepts_impls():
    mask = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    assert choose_impl("auto", mask) == "sparse"
    mask.view(-1)[: int(0.9 * mask.numel())] = True
    assert choose_impl("auto", mask) == "dense"
    mask[:] = True
    assert choose_impl("auto", mask) == "dense"
    mask.zero_()
    mask.view(-1)[: int(AUTO_SPARSE_BELOW * mask.numel()) - 1] = True
    assert choose_impl("auto", mask) == "sparse"
    assert choose_impl("dense", mask) == "dense" and choose_impl("sparse", mask) == "sparse"
    with pytest.raises(ValueError, match="impl"):
        choose_impl("gathered", mask)
    conv = RoiConv2d(2, 3, 3, padding=1, impl="sparse")
    x, m = torch.randn(2, 2, 10, 10), mask
    torch.testing.assert_close(conv(x, m), roi_conv2d(x, conv.weight, conv.bias, m, padding=1))


# --- head -------------------------------------------------------------------------------------


def _head_and_inputs(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    head = FCNHead(6, GridGeometry(16, 8.0), fc6_kernel=7, fc6_padding=3, fc6_channels=8,
                   fc7_channels=8, dropout=0.0).to(dtype)
    with torch.no_grad():  # the score layer starts at zero; make it informative
        head.score.weight.normal_(0, 0.3)
        head.score.bias.normal_(0, 0.3)
    features = torch.randn(3, 6, 6, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    rois = [
        torch.tensor([[10.0, 5.0, 40.0, 30.0], [0.0, 60.0, 20.0, 96.0]]),  # second at a border
        torch.zeros((0, 4)),
        torch.tensor([[50.0, 70.0, 80.0, 96.0]]),  # bottom-right corner
    ]
    return head, features, rois


def _head_run(head, features, rois, impl):
    head.roi_impl = impl
    head.zero_grad()
    f = features.clone().requires_grad_(True)
    logits = head(f, (96, 80), rois)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    (logits * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in head.named_parameters()}
    return logits.detach(), f.grad, grads


@pytest.mark.parametrize("mode", ["eval", "train_no_dropout"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_head_sparse_equals_dense_logits_and_gradients(mode, dtype):
    head, features, rois = _head_and_inputs(dtype=dtype)
    head.train(mode != "eval")
    dense = _head_run(head, features, rois, "dense")
    sparse = _head_run(head, features, rois, "sparse")
    rel = 1e-10 if dtype == torch.float64 else 1e-5
    _close(sparse[0], dense[0], rel)
    _close(sparse[1], dense[1], rel)
    assert sparse[2].keys() == dense[2].keys()
    for name in dense[2]:
        _close(sparse[2][name], dense[2][name], rel)
    assert torch.count_nonzero(sparse[0][1]) == 0  # image without ROIs
    assert head.fc6.weight.grad is not None


def test_head_roi_impl_is_runtime_only_and_plain_path_unchanged():
    head, features, _ = _head_and_inputs()
    assert head.roi_impl == "auto"
    keys = head.state_dict().keys()
    head.roi_impl = "sparse"
    assert head.state_dict().keys() == keys and "roi_impl" not in str(list(keys))
    with pytest.raises(ValueError, match="roi_impl"):
        head.roi_impl = "fast"
    head.eval()
    plain = head(features, (96, 80))  # baselines: no ROIs -> plain convolutions
    head.roi_impl = "dense"
    torch.testing.assert_close(plain, head(features, (96, 80)), rtol=0, atol=0)


def test_head_auto_uses_dense_at_high_coverage(monkeypatch):
    head, features, _ = _head_and_inputs()
    head.eval()
    calls = []
    monkeypatch.setattr(head, "_sparse_scores",
                        lambda *a: calls.append(1) or FCNHead._sparse_scores(head, *a))
    full = [torch.tensor([[0.0, 0.0, 80.0, 96.0]])] * 3
    small = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])] * 3
    head(features, (96, 80), full)
    assert calls == []
    head(features, (96, 80), small)
    assert calls == [1]


def test_rpn_fcn_eval_equal_between_dense_and_sparse_heads():
    torch.manual_seed(0)
    model = build_model(get_preset("fast")).eval()
    with torch.no_grad():
        model.head.score.weight.normal_(0, 0.2)
        model.head.score.bias.copy_(torch.tensor([0.0, 0.3]))
    images = torch.rand(2, 1, 80, 64)
    results = {}
    for impl in ("dense", "sparse"):
        model.head.roi_impl = impl
        with torch.no_grad():
            results[impl] = model(images)
    for d, s in zip(results["dense"], results["sparse"]):
        assert d["boxes"].shape[0] > 0
        torch.testing.assert_close(s["boxes"], d["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(s["probabilities"], d["probabilities"], rtol=1e-5, atol=1e-6)
        assert (s["probabilities"] > 0).any()


@pytest.mark.parametrize("device,dtype,tol", [
    ("cpu", torch.bfloat16, (0.05, 0.1)),
    pytest.param("cuda", torch.float16, (5e-3, 2e-2), marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")),
])
def test_gathered_conv_under_autocast_matches_float32(device, dtype, tol):
    """The sparse path under autocast (bfloat16 on the CPU, float16 on CUDA as in inference)
    runs the gathered matmul in float32 and gives the float32 result."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 10, device=device)
    w = torch.randn(16, 8, 3, 3, device=device)
    b = torch.randn(16, device=device)
    mask = torch.zeros(2, 1, 12, 10, dtype=torch.bool, device=device)
    mask[0, 0, 2:5, 3:6] = True
    mask[1, 0, 7:9, 1:3] = True
    want = roi_conv2d(x, w, b, mask, padding=1, impl="dense")
    with torch.autocast(device, dtype=dtype):
        got = roi_conv2d(x.to(dtype), w, b, mask, padding=1, impl="sparse")
    assert got.dtype == torch.float32
    # Only the low-precision rounding of the input differs.
    torch.testing.assert_close(got, want, rtol=tol[0], atol=tol[1])
    assert not got.masked_select(~mask.expand_as(got)).any()
