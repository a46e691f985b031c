"""ROI convolution (Eq. 1-2) against the slow reference, gradcheck, and the box -> cell rule."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src_model.roi_conv import (
    RoiConv2d,
    boxes_to_cell_mask,
    boxes_to_pixel_mask,
    roi_conv2d,
    roi_conv2d_reference,
)
from src_model.roi_conv_sparse import conv_out_size as _out

CONV_CASES = [  # (kernel, stride, padding, dilation)
    (3, 1, 1, 1),
    (7, 1, 3, 1),
    (7, 1, 0, 1),
    (3, 2, 1, 1),
    (3, 1, 2, 2),
    (1, 1, 0, 1),
]




def _random_case(k, s, p, d, seed=0, dtype=torch.float64, n=2, cin=3, cout=4, h=11, w=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    mask = torch.rand(n, 1, _out(h, k, s, p, d), _out(w, k, s, p, d), generator=g) > 0.6
    mask[-1] = False  # one image without any ROI
    return x, weight, bias, mask


@pytest.mark.parametrize("k,s,p,d", CONV_CASES)
def test_dense_matches_reference_with_gradients(k, s, p, d):
    x, weight, bias, mask = _random_case(k, s, p, d)
    tensors = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    ref = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    upstream = torch.randn(x.shape[0], weight.shape[0], *mask.shape[-2:], dtype=x.dtype)

    out = roi_conv2d(*tensors, mask, stride=s, padding=p, dilation=d)
    out_ref = roi_conv2d_reference(*ref, mask, stride=s, padding=p, dilation=d)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-12)
    (out * upstream).sum().backward()
    (out_ref * upstream).sum().backward()
    for got, want, name in zip(tensors, ref, ("input", "weight", "bias")):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-12, msg=name)


def test_weight_and_bias_gradients_follow_eq2():
    """dE/dw = sum over ROI positions of delta * input patch; dE/db = sum of delta over ROIs."""
    x, weight, bias, mask = _random_case(3, 1, 1, 1, seed=3)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    upstream = torch.randn(x.shape[0], weight.shape[0], *mask.shape[-2:], dtype=x.dtype)
    (roi_conv2d(x, weight, bias, mask, padding=1) * upstream).sum().backward()

    delta = upstream * mask  # Eq. 2: the indicator on the output position
    patches = F.unfold(x, 3, padding=1)  # [N, Cin*9, Ho*Wo]
    want_w = torch.einsum("nol,nkl->ok", delta.flatten(2), patches).view_as(weight)
    torch.testing.assert_close(weight.grad, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias.grad, delta.sum(dim=(0, 2, 3)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_gradcheck(k, s, p, d):
    x, weight, bias, mask = _random_case(k, s, p, d, n=2, cin=2, cout=2, h=6, w=5)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda a, b, c: roi_conv2d(a, b, c, mask, stride=s, padding=p, dilation=d), inputs
    )


def test_outside_positions_are_exactly_zero_even_with_bias():
    x = torch.randn(1, 2, 8, 8)
    weight = torch.randn(3, 2, 3, 3)
    bias = torch.full((3,), 5.0)  # the authors' layer would put 5 everywhere
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 2:4, 5:7] = True
    out = roi_conv2d(x, weight, bias, mask, padding=1)
    assert torch.count_nonzero(out[~mask.expand_as(out)]) == 0
    plain = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(out[mask.expand_as(out)], plain[mask.expand_as(out)])


def test_inputs_feeding_only_outside_positions_get_exactly_zero_gradient():
    x = torch.randn(1, 2, 10, 10, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3)
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    mask[..., 1, 1] = True  # one active output position: it reads inputs rows/cols 0..2
    roi_conv2d(x, weight, torch.randn(3), mask, padding=1).pow(2).sum().backward()
    grad = x.grad[0].abs().sum(0)
    assert torch.count_nonzero(grad[3:, :]) == 0 and torch.count_nonzero(grad[:, 3:]) == 0
    assert torch.count_nonzero(grad[:3, :3]) == 9


def test_empty_mask_gives_zero_output_and_zero_gradients():
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    conv = RoiConv2d(2, 3, 3, padding=1)
    out = conv(x, torch.zeros(2, 1, 6, 6, dtype=torch.bool))
    out.sum().backward()
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(conv.weight.grad) == 0
    assert torch.count_nonzero(conv.bias.grad) == 0


def test_module_is_a_conv2d_and_plain_without_mask():
    conv = RoiConv2d(2, 3, 3, padding=1)
    plain = nn.Conv2d(2, 3, 3, padding=1)
    assert isinstance(conv, nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    full = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    torch.testing.assert_close(conv(x, full), conv(x))


def test_bad_arguments_raise_clear_errors():
    x, weight, bias, mask = _random_case(3, 1, 1, 1)
    with pytest.raises(ValueError, match="mask must be a bool Tensor"):
        roi_conv2d(x, weight, bias, mask[..., :-1], padding=1)
    with pytest.raises(ValueError, match="mask must be a bool Tensor"):
        roi_conv2d(x, weight, bias, mask.float(), padding=1)
    with pytest.raises(ValueError, match="impl"):
        roi_conv2d(x, weight, bias, mask, padding=1, impl="sparse-someday")
    with pytest.raises(ValueError, match="groups"):
        RoiConv2d(4, 4, 3, groups=2)


# --- box -> cell / pixel rules ------------------------------------------------------------


def _cell_mask_brute(boxes, out_size, stride, offset):
    ho, wo = out_size
    m = torch.zeros(ho, wo, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        for r, c in itertools.product(range(ho), range(wo)):
            cy, cx = offset + stride * r, offset + stride * c
            if (
                cx - stride / 2 < x2
                and cx + stride / 2 > x1
                and cy - stride / 2 < y2
                and cy + stride / 2 > y1
            ):
                m[r, c] = True
    return m


def _pixel_mask_brute(boxes, size):
    h, w = size
    m = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        for i, j in itertools.product(range(h), range(w)):
            if x1 <= j + 0.5 <= x2 and y1 <= i + 0.5 <= y2:
                m[i, j] = True
    return m


def test_cell_rule_fast_geometry_exact_cells():
    # fast preset geometry (16, 8): cell (r, c) covers pixels 16r..16r+15, 16c..16c+15.
    boxes = [
        torch.tensor([[0.0, 0.0, 16.0, 16.0]]),  # exactly cell (0, 0)
        torch.tensor([[15.5, 0.0, 16.5, 1.0]]),  # straddles the border of cells (0,0)/(0,1)
        torch.tensor([[40.0, 20.0, 41.0, 21.0]]),  # inside cell (1, 2)
    ]
    m = boxes_to_cell_mask(boxes, (4, 5), stride=16, offset=8.0)
    assert m.shape == (3, 1, 4, 5) and m.dtype == torch.bool
    assert m[0, 0].nonzero().tolist() == [[0, 0]]
    assert m[1, 0].nonzero().tolist() == [[0, 0], [0, 1]]
    assert m[2, 0].nonzero().tolist() == [[1, 2]]


def test_cell_rule_borders_overlaps_empty_and_batch():
    stride, offset, size = 16.0, -41.0, (9, 7)  # the paper's conv5_3 grid
    boxes = [
        torch.tensor([[-45.0, -45.0, 5.0, 5.0], [50.0, 80.0, 400.0, 400.0]]),  # off the borders
        torch.tensor([[10.0, 10.0, 50.0, 40.0], [30.0, 20.0, 70.0, 60.0]]),  # overlapping
        torch.zeros((0, 4)),  # slice without ROI
        torch.tensor([[500.0, 500.0, 600.0, 600.0]]),  # entirely outside the grid
    ]
    m = boxes_to_cell_mask(boxes, size, stride, offset)
    for i, b in enumerate(boxes):
        torch.testing.assert_close(m[i, 0], _cell_mask_brute(b, size, stride, offset))
    assert m[2].sum() == 0 and m[3].sum() == 0
    assert m[0, 0, 0, 0] and m[0, 0, -1, -1]  # clamped to the grid, not dropped


def test_cell_rule_random_boxes_match_brute_force():
    g = torch.Generator().manual_seed(1)
    for stride, offset in [(16.0, 8.0), (16.0, 7.0), (32.0, 13.0), (4.0, 1.5)]:
        xy = torch.rand(6, 2, generator=g) * 120 - 10
        wh = torch.rand(6, 2, generator=g) * 50 + 0.5
        boxes = torch.cat([xy, xy + wh], dim=1)
        m = boxes_to_cell_mask([boxes], (8, 6), stride, offset)
        torch.testing.assert_close(m[0, 0], _cell_mask_brute(boxes, (8, 6), stride, offset))


def test_pixel_rule_matches_brute_force_and_is_covered_by_cells():
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(5, 2, generator=g) * 60 - 5
    boxes = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * 30 + 0.5], dim=1)
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 3.0, 2.0]])])  # integer edges
    size = (50, 40)
    pix = boxes_to_pixel_mask([boxes], size)[0]
    torch.testing.assert_close(pix, _pixel_mask_brute(boxes, size))
    assert pix[:2, :3].all() and not pix[2, 0] and not pix[0, 3]
    # Every pixel inside a box lies in the footprint of an active cell (footprints tile).
    for stride, offset in [(16.0, 8.0), (16.0, 7.0)]:
        cells = boxes_to_cell_mask([boxes], (5, 4), stride, offset)[0, 0]
        ii, jj = pix.nonzero().unbind(1)
        r = torch.floor((ii + 0.5 - offset) / stride + 0.5).long()
        c = torch.floor((jj + 0.5 - offset) / stride + 0.5).long()
        assert cells[r.clamp(0, 4), c.clamp(0, 3)].all()


def test_pixel_mask_empty_and_degenerate():
    m = boxes_to_pixel_mask([torch.zeros((0, 4)), torch.tensor([[5.0, 5.0, 5.0, 9.0]])], (8, 8))
    assert m.shape == (2, 8, 8) and m.sum() == 0
    assert boxes_to_pixel_mask([], (8, 8)).shape == (0, 8, 8)
    with pytest.raises(ValueError, match=r"Tensor\[K, 4\]"):
        boxes_to_pixel_mask([torch.zeros(4)], (8, 8))


def test_cell_rule_few_boxes_fill_equals_difference_array(monkeypatch):
    """The CPU fast path for a few boxes (slicing) and the difference array give the same cells,
    on the borders, off the grid, for empty images and for fractional edges at every stride."""
    import src_model.roi_conv as rc

    g = torch.Generator().manual_seed(3)
    for stride, offset in [(16.0, 8.0), (8.0, 4.0), (2.0, 1.0), (16.0, -41.0)]:
        xy = torch.rand(7, 2, generator=g) * 300 - 40
        boxes = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 90 + 0.25], dim=1)
        batch = [boxes[:3], torch.zeros((0, 4)), boxes[3:], torch.tensor([[16.0, 8.0, 32.0, 24.0]])]
        fast = rc.boxes_to_cell_mask(batch, (23, 12), stride, offset)
        monkeypatch.setattr(rc, "FEW_BOXES", 0)
        slow = rc.boxes_to_cell_mask(batch, (23, 12), stride, offset)
        monkeypatch.undo()
        assert fast.any() and torch.equal(fast, slow)
        fast_px = rc.boxes_to_pixel_mask(batch, (60, 50))
        monkeypatch.setattr(rc, "FEW_BOXES", 0)
        assert torch.equal(rc.boxes_to_pixel_mask(batch, (60, 50)), fast_px)
        monkeypatch.undo()
    nan = [torch.tensor([[float("nan"), 0.0, 5.0, 5.0], [0.0, 0.0, 20.0, 20.0]])]
    fast_nan = rc.boxes_to_cell_mask(nan, (4, 4), 16.0, 8.0)
    monkeypatch.setattr(rc, "FEW_BOXES", 0)
    assert torch.equal(rc.boxes_to_cell_mask(nan, (4, 4), 16.0, 8.0), fast_nan)


def test_cell_rects_are_the_rectangles_the_mask_fills(monkeypatch):
    """``boxes_to_cell_rects`` gives exactly the clipped, non-empty rectangles whose union is
    ``boxes_to_cell_mask`` (the head bounds its windows with them), and None where the mask
    takes the tensor path (many boxes, non-finite coordinates)."""
    import src_model.roi_conv as rc

    g = torch.Generator().manual_seed(4)
    xy = torch.rand(6, 2, generator=g) * 300 - 40
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 90 + 0.25], dim=1)
    batch = [boxes[:2], torch.zeros((0, 4)), boxes[2:], torch.tensor([[-50.0, -50.0, -10.0, -5.0]])]
    for stride in (16.0, 8.0, 2.0):
        rects = rc.boxes_to_cell_rects(batch, (23, 12), stride, stride / 2)
        mask = rc.boxes_to_cell_mask(batch, (23, 12), stride, stride / 2)
        drawn = torch.zeros_like(mask)
        for i, r0, r1, c0, c1 in rects:
            assert 0 <= r0 < r1 <= 23 and 0 <= c0 < c1 <= 12
            drawn[i, 0, r0:r1, c0:c1] = True
        assert torch.equal(drawn, mask) and torch.equal(rc.rects_to_mask(rects, mask.shape), mask)
        assert not any(r[0] in (1, 3) for r in rects)  # no box / a box off the grid: no rectangle
    nan = [torch.tensor([[float("nan"), 0.0, 5.0, 5.0]])]
    assert rc.boxes_to_cell_rects(nan, (4, 4), 16.0, 8.0) is None
    monkeypatch.setattr(rc, "FEW_BOXES", 1)
    assert rc.boxes_to_cell_rects(batch, (23, 12), 16.0, 8.0) is None
    with pytest.raises(ValueError, match=r"Tensor\[K, 4\]"):
        rc.boxes_to_cell_rects([torch.zeros(4)], (4, 4), 16.0, 8.0)


def test_cell_rule_huge_coordinates_cover_the_grid_on_both_paths(monkeypatch):
    import src_model.roi_conv as rc

    boxes = [torch.tensor([[-1e30, -1e30, 1e30, 1e30]], dtype=torch.float64)]
    fast = rc.boxes_to_cell_mask(boxes, (5, 4), 16.0, 8.0)
    monkeypatch.setattr(rc, "FEW_BOXES", 0)
    assert fast.all() and torch.equal(rc.boxes_to_cell_mask(boxes, (5, 4), 16.0, 8.0), fast)
    assert rc.boxes_to_pixel_mask(boxes, (6, 5)).all()
    with pytest.raises(ValueError, match="Tensor\\[K, 4\\]"):
        rc.boxes_to_cell_mask([torch.tensor(1.0)], (5, 4), 16.0, 8.0)
