"""The gathered ("sparse") ROI convolution: the convolution at the active output cells only.

Im2col of just those cells (read straight from the padded input, never a dense im2col), one
matmul, and a scatter back onto the grid; a custom autograd function whose backward is the same
gather transposed. Cost, forward and backward, follows the number of active cells. Used by
``roi_conv.roi_conv2d(impl="sparse")`` and by the head's sparse path; equality with the dense
masked convolution is tested in ``tests/model/test_roi_conv_sparse.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["active_cells", "conv_out_size", "roi_conv2d_gathered", "scatter_cells"]

# The gathered path works through the active cells in chunks of at most this many im2col elements
# (64 MiB in float32), so a large ROI union never materialises a conv-sized column matrix.
_CHUNK_ELEMENTS = 1 << 24

def conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def active_cells(mask: Tensor) -> Tensor:
    """Active cells of a ``Tensor[N, 1, Ho, Wo] bool`` mask as ``Tensor[A, 3] int64`` rows
    ``(n, r, c)``, in row-major order (image, then row, then column)."""
    return mask[:, 0].nonzero()


def _chunks(count: int, row_elements: int) -> list[slice]:
    rows = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(i, min(i + rows, count)) for i in range(0, count, rows)]


class _Columns:
    """The im2col rows of a set of output cells, read from the padded input without a dense
    im2col: ``gather(part) -> Tensor[a, K]`` for the cells ``part``, plus the matching weight
    matrix ``Tensor[C_out, K]`` and the scatter-add that is the transpose of the gather.

    Two layouts of the K axis (same numbers, different speed):

    * ``"nchw"``: K ordered ``(C_in, kh, kw)`` like ``weight.view(C_out, -1)``: the weight is
      used as is, the gather reads a zero-copy ``[N, Ho, Wo, C_in, kh, kw]`` window view
      element by element.
    * ``"nhwc"``: K ordered ``(kh, kw, C_in)``: the input is made channels-last and each tap of
      each cell is one contiguous row of ``C_in`` values (``index_select``/``index_add_`` of rows,
      ~2-3x faster per element), but the weight must be permuted (``C_out * K`` copies).

    "nhwc" pays when the gathered rows outnumber the weight's rows (``A >= C_out``).
    """

    @staticmethod
    def padded_input(input: Tensor, padding: int, layout: str) -> Tensor:
        """The zero-padded input ``[N, C, Hp, Wp]``; for "nhwc" with channels-last strides,
        padded and permuted in one copy (none when the input is channels_last and unpadded)."""
        if layout == "nchw":
            x_pad = F.pad(input, (padding,) * 4) if padding else input
            if x_pad.is_contiguous() or x_pad.is_contiguous(memory_format=torch.channels_last):
                return x_pad
            return x_pad.contiguous()
        nhwc = input.permute(0, 2, 3, 1)
        if padding == 0 and nhwc.is_contiguous():
            return input
        n, c, h, w = input.shape
        buf = input.new_zeros((n, h + 2 * padding, w + 2 * padding, c))
        buf[:, padding : padding + h, padding : padding + w] = nhwc
        return buf.permute(0, 3, 1, 2)

    def __init__(self, x_pad: Tensor, cells: Tensor, weight_shape: torch.Size, stride: int,
                 dilation: int, out_size: tuple[int, int], layout: str) -> None:
        self.n, self.cin, self.hp, self.wp = x_pad.shape
        self.cout, _, self.kh, self.kw = weight_shape
        self.k = self.cin * self.kh * self.kw
        self.layout, self.stride, self.dilation = layout, stride, dilation
        self.n_idx, self.r_idx, self.c_idx = cells.unbind(1)
        if layout == "nhwc":  # x_pad is channels-last (padded_input): rows of C_in values
            self.source = x_pad.permute(0, 2, 3, 1).view(-1, self.cin)
        else:
            n, c = x_pad.shape[:2]
            sn, sc, sh, sw = x_pad.stride()
            self.source = x_pad.as_strided(
                (n, out_size[0], out_size[1], c, self.kh, self.kw),
                (sn, stride * sh, stride * sw, sc, dilation * sh, dilation * sw),
            )
        device = cells.device
        self.taps_r = torch.arange(self.kh, device=device) * dilation
        self.taps_c = torch.arange(self.kw, device=device) * dilation

    def tap_rows(self, part: slice) -> Tensor:
        """``Tensor[a * kh * kw]``: row of the channels-last padded input read by each tap."""
        rows = (self.r_idx[part] * self.stride)[:, None, None] + self.taps_r[None, :, None]
        cols = (self.c_idx[part] * self.stride)[:, None, None] + self.taps_c[None, None, :]
        return ((self.n_idx[part][:, None, None] * self.hp + rows) * self.wp + cols).reshape(-1)

    def gather(self, part: slice) -> Tensor:
        if self.layout == "nhwc":
            return self.source.index_select(0, self.tap_rows(part)).view(-1, self.k)
        return self.source[self.n_idx[part], self.r_idx[part], self.c_idx[part]].reshape(-1, self.k)

    def weight_matrix(self, weight: Tensor) -> Tensor:
        if self.layout == "nhwc":
            return weight.permute(0, 2, 3, 1).reshape(self.cout, self.k)
        return weight.reshape(self.cout, self.k)

    def weight_grad(self, grad_matrix: Tensor) -> Tensor:
        if self.layout == "nhwc":
            return grad_matrix.view(self.cout, self.kh, self.kw, self.cin).permute(0, 3, 1, 2)
        return grad_matrix.view(self.cout, self.cin, self.kh, self.kw)

    def scatter_add(self, grad_rows: Tensor, part: slice, grad_cols: Tensor) -> None:
        """``grad_rows[N*Hp*Wp, C_in] += `` the transpose of :meth:`gather` applied to
        ``grad_cols Tensor[a, K]``."""
        if self.layout == "nchw":
            grad_cols = grad_cols.view(-1, self.cin, self.kh * self.kw).transpose(1, 2)
        grad_rows.index_add_(0, self.tap_rows(part), grad_cols.reshape(-1, self.cin))


def _layout(cells: Tensor, cout: int) -> str:
    return "nhwc" if cells.shape[0] >= cout else "nchw"


class _GatheredConv(torch.autograd.Function):
    """Convolution at the listed output cells only: im2col of those cells + one matmul.

    Forward ``cols Tensor[A, K] @ W.T + bias``. The columns are not kept for backward (they are
    gathered again, chunk by chunk), so memory follows the ROI area. Backward:
    ``dW = dY.T @ cols``, ``db = dY.sum(0)``, and ``dX`` by scatter-adding ``dY @ W`` into an
    input-sized zero gradient (``index_add_`` of rows) -- never a dense conv-sized tensor.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, cells, stride, padding, dilation):  # type: ignore[override]
        cout, _, kh, kw = weight.shape
        out_size = (
            conv_out_size(input.shape[2], kh, stride, padding, dilation),
            conv_out_size(input.shape[3], kw, stride, padding, dilation),
        )
        layout = _layout(cells, cout)
        x_pad = _Columns.padded_input(input, padding, layout)
        columns = _Columns(x_pad, cells, weight.shape, stride, dilation, out_size, layout)
        w2 = columns.weight_matrix(weight)
        out = input.new_empty((cells.shape[0], cout))
        for part in _chunks(cells.shape[0], columns.k):
            if bias is None:
                torch.mm(columns.gather(part), w2.t(), out=out[part])
            else:
                torch.addmm(bias, columns.gather(part), w2.t(), out=out[part])
        ctx.save_for_backward(x_pad, weight, cells)
        ctx.geometry = (stride, padding, dilation, out_size, bias is not None)
        ctx.input_format = (
            torch.channels_last
            if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
            else torch.contiguous_format
        )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x_pad, weight, cells = ctx.saved_tensors
        stride, padding, dilation, out_size, has_bias = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        layout = _layout(cells, weight.shape[0])
        columns = _Columns(x_pad, cells, weight.shape, stride, dilation, out_size, layout)
        w2 = columns.weight_matrix(weight)
        n, cin, hp, wp = x_pad.shape
        grad_w = weight.new_zeros(w2.shape) if need_w else None
        grad_rows = x_pad.new_zeros((n * hp * wp, cin)) if need_x else None
        for part in _chunks(cells.shape[0], columns.k):
            g = grad_out[part]
            if need_w:
                grad_w.addmm_(g.t(), columns.gather(part))
            if need_x:
                columns.scatter_add(grad_rows, part, torch.mm(g, w2))
        grad_x = None
        if need_x:  # channels-last rows -> NCHW, padding cropped
            grad_x = grad_rows.view(n, hp, wp, cin).permute(0, 3, 1, 2)
            grad_x = grad_x[:, :, padding : hp - padding, padding : wp - padding]
            grad_x = grad_x.contiguous(memory_format=ctx.input_format)
        grad_w = columns.weight_grad(grad_w) if need_w else None
        grad_b = grad_out.sum(0) if (need_b and has_bias) else None
        return grad_x, grad_w, grad_b, None, None, None, None


def _autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``; torch < 2.4 only has the per-device forms."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


def roi_conv2d_gathered(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    cells: Tensor,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Tensor:
    """The convolution at the listed output cells only, in gathered form.

    Parameters
    ----------
    input, weight, bias, stride, padding, dilation
        As for :func:`roi_conv2d`.
    cells
        ``Tensor[A, 3] int64`` rows ``(n, r, c)`` of output cells (:func:`active_cells`); each
        cell at most once.

    Returns
    -------
    ``Tensor[A, C_out]``: row ``a`` is ``conv2d(input, weight, bias)[n_a, :, r_a, c_a]``. Cost
    (forward and backward) follows ``A``, not the grid size. :func:`scatter_cells` puts the rows
    back on the grid. Differentiable (first order) in input, weight and bias.

    Under autocast (float16 inference on CUDA) the gathered matmul runs in float32 -- the autograd
    function writes into preallocated outputs, which autocast cannot retype -- and returns
    float32 rows; the layers after it are autocast as usual.
    """
    device_type = input.device.type
    if _autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return _GatheredConv.apply(
                input.float(), weight.float(), None if bias is None else bias.float(), cells,
                stride, padding, dilation)
    return _GatheredConv.apply(input, weight, bias, cells, stride, padding, dilation)


def scatter_cells(values: Tensor, cells: Tensor, size: tuple[int, int, int, int]) -> Tensor:
    """``Tensor[A, C]`` rows at ``cells`` (``Tensor[A, 3]``, ``(n, r, c)``) -> a zero
    ``Tensor[N, C, Ho, Wo]`` (``size``) holding row ``a`` at ``[n_a, :, r_a, c_a]``.
    Differentiable in ``values``."""
    out = values.new_zeros(size)
    n_idx, r_idx, c_idx = cells.unbind(1)
    out[n_idx, :, r_idx, c_idx] = values
    return out
