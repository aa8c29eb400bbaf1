"""PixelCNN++'s layers (Salimans et al. 2017, Sections 2.3-2.4; the shifted convolutions of
van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"): shifted
convolutions and their transposes, the 1x1 "network in network", concat_elu, and the gated resnet
block.

Causality lives here. A down-shifted convolution (kernel 2x3, padded one row on top and one column
either side, none below) sees only the rows above and the current row... of its *input*; the network
feeds it inputs that are already shifted down by one row, so the u stream at row i depends on image
rows < i only. A down-right-shifted convolution (kernel 2x2, padded on top and left) sees the row
above and the pixels to the left; the ul stream at (i, j) depends on pixels before (i, j) in raster
order. Strided versions and their transposes keep both properties (tests/models/test_pixelcnn.py
checks the whole network).

Speed without changing the function: activations are channels-last (oneDNN's fast layout on CPU),
and concat_elu writes its output straight into the zero-padded buffer the next convolution reads, so
the padding costs no copy; its backward works from the saved output alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SHIFTS = ("down", "down_right")


def shift_padding(kernel_size: tuple[int, int], shift: str) -> tuple[int, int, int]:
    """(top, left, right) zero padding that makes a convolution see only what its shift allows."""
    kh, kw = kernel_size
    if shift == "down":  # the rows above and the current row, centred horizontally
        return kh - 1, (kw - 1) // 2, (kw - 1) // 2
    if shift == "down_right":  # the rows above and the columns to the left
        return kh - 1, kw - 1, 0
    raise ValueError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")


class _ConcatElu(torch.autograd.Function):
    """elu(cat(x, -x)) along channels, then (optionally) dropout, written into a channels-last buffer
    with zero borders: one output buffer and one saved tensor where autograd's own ops would need
    five (neg, cat, elu, pad, dropout)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, top: int, left: int, right: int, dropout: float) -> torch.Tensor:
        batch, channels, height, width = x.shape
        out = torch.empty((batch, 2 * channels, height + top, width + left + right), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        if top:
            out[:, :, :top].zero_()
        if left:
            out[:, :, top:, :left].zero_()
        if right:
            out[:, :, top:, left + width:].zero_()
        inner = out[:, :, top:, left:left + width]
        # Inverted dropout's 1 / (1 - p) rides on elu's output scale: scale * elu(z), no extra pass.
        scale = 1.0 / (1.0 - dropout)
        torch.ops.aten.elu.out(x, 1.0, scale, 1.0, out=inner[:, :channels])
        torch.neg(x, out=inner[:, channels:])
        torch.ops.aten.elu_(inner[:, channels:], 1.0, scale, 1.0)
        keep = None
        if dropout > 0:
            keep = keep_mask(inner.shape, dropout, x.dtype, x.device)
            inner.mul_(keep)
        ctx.save_for_backward(out, keep)
        ctx.geometry = (channels, top, left, width, scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, keep = ctx.saved_tensors
        channels, top, left, width, scale = ctx.geometry
        inner = (slice(None), slice(None), slice(top, None), slice(left, left + width))
        grad = grad[inner]
        if keep is not None:
            grad = grad * keep  # dropped units pass no gradient (their output 0 would read as elu < 0)
        # (scale * elu)'(z) = scale for z > 0, scale * elu(z) + scale otherwise: a function of the output
        grad_both = torch.ops.aten.elu_backward(grad, 1.0, scale, 1.0, True, out[inner])
        return grad_both[:, :channels] - grad_both[:, channels:], None, None, None, None


# 1.0's bit pattern per floating dtype (a constant, not a tensor's .item(), which torch.compile cannot trace)
_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00, torch.float32: 0x3F800000,
             torch.float64: 0x3FF0000000000000}


def keep_mask(shape: torch.Size, dropout: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Dropout's mask: 1 (kept) with probability 1 - `dropout`, else 0, in `dtype`, shaped (B, C, H, W) and
    laid out channels-last, drawn from torch's default generator like every other op.

    Each element takes the fewest random bits that express its probability exactly (1 for the usual 0.5,
    2 for 0.25 or 0.75, up to 8); other probabilities are resolved to 1/65536 from 16 bits. The mask is
    built with integer arithmetic in x's own width, ending in the bit pattern of 1.0, because on a CPU
    both `bernoulli_` (32 random bits per element) and a bool mask (a conversion pass before every
    product) cost more than the rest of the dropout: together a tenth of a PixelCNN++ training step.
    """
    batch, channels, height, width = shape
    n = batch * channels * height * width
    bits = next((b for b in (1, 2, 4, 8) if (dropout * 2**b).is_integer()), 16)
    words = torch.empty(2 * -(-n * bits // 64), dtype=torch.int32, device=device).random_(-(2**31), 2**31)
    if bits == 16:  # a signed 16-bit field, uniform on [-32768, 32767]
        keep = (words.view(torch.int16)[:n] < round((1.0 - dropout) * 65536) - 32768).to(dtype)
    else:  # fields of `bits` bits, each uniform on [0, 2**bits); kept when below (1 - dropout) * 2**bits
        int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
        int_bits = 8 * dtype.itemsize
        fields = words.view(int_type).unsqueeze(-1) >> torch.arange(0, int_bits, bits, dtype=int_type, device=device)
        fields.bitwise_and_(2**bits - 1).sub_(round((1.0 - dropout) * 2**bits))  # negative: kept
        fields.bitwise_right_shift_(int_bits - 1)  # kept: all ones (the sign, shifted in); dropped: 0
        fields.bitwise_and_(_ONE_BITS[dtype])  # the bits of 1.0 where kept
        keep = fields.view(-1)[:n].view(dtype)
    return keep.view(batch, height, width, channels).permute(0, 3, 1, 2)


def concat_elu(x: torch.Tensor, padding: tuple[int, int, int] = (0, 0, 0), *, dropout: float = 0.0) -> torch.Tensor:
    """elu(cat(x, -x)) over channels (the paper's nonlinearity: both signs of x pass), then inverted
    dropout with probability `dropout` (pass 0 in evaluation), zero-padded (top, left, right) for the
    shifted convolution that reads it. The output is channels-last."""
    return _ConcatElu.apply(x, *padding, dropout)


class _WeightNormed(nn.Module):
    """A kernel, optionally weight-normalised: w = g v / ||v|| with one g per output channel
    (Salimans & Kingma 2016, as PixelCNN++ uses it). Initialised as PyTorch initialises its layers,
    with g = ||v||, so the initial function does not depend on the choice. Kernels are stored
    channels-last, the layout oneDNN wants beside channels-last activations (no copy per call)."""

    def __init__(self, shape: tuple[int, ...], *, out_dim: int, fan_in: int, weight_norm: bool) -> None:
        super().__init__()
        weight = torch.empty(shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        weight = weight.contiguous(memory_format=torch.channels_last)
        self.out_dim = out_dim
        if weight_norm:
            self.v = nn.Parameter(weight)
            norm_dims = tuple(d for d in range(weight.dim()) if d != out_dim)
            self.g = nn.Parameter(torch.linalg.vector_norm(weight, dim=norm_dims, keepdim=True))
        else:
            self.weight = nn.Parameter(weight)
        bound = 1.0 / math.sqrt(fan_in)
        self.bias = nn.Parameter(torch.empty(shape[out_dim]).uniform_(-bound, bound))
        self.weight_norm = weight_norm

    def kernel(self) -> torch.Tensor:
        if not self.weight_norm:
            return self.weight
        # One fused op forward and one backward (instead of norm, divide, multiply and their grads).
        return torch._weight_norm(self.v, self.g, self.out_dim)


class ShiftedConv2d(_WeightNormed):
    """A down- or down-right-shifted convolution on (B, C, H, W); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 3), *,
                 shift: str = "down", stride: int = 1, weight_norm: bool = True) -> None:
        super().__init__((out_channels, in_channels, *kernel_size), out_dim=0,
                         fan_in=in_channels * kernel_size[0] * kernel_size[1], weight_norm=weight_norm)
        self.padding = shift_padding(kernel_size, shift)
        self.stride = stride

    def forward(self, x: torch.Tensor, *, padded: bool = False) -> torch.Tensor:
        """`padded`: x already carries `self.padding` (as `concat_elu` writes it)."""
        weight = self.kernel()
        if padded:
            return F.conv2d(x, weight, self.bias, self.stride)
        # The convolution's own (symmetric) padding, then drop the extra rows and columns it adds below
        # and to the right: the same result as asymmetric padding, without copying x.
        top, left, right = self.padding
        kh, kw = weight.shape[2:]
        out_h = (x.shape[2] + top - kh) // self.stride + 1
        out_w = (x.shape[3] + left + right - kw) // self.stride + 1
        side = max(left, right)
        y = F.conv2d(x, weight, self.bias, self.stride, padding=(top, side))
        return y[:, :, :out_h, side - left:side - left + out_w]


class ShiftedConvTranspose2d(_WeightNormed):
    """The transpose of a strided shifted convolution: up-samples and keeps the shift."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int] = (2, 3), *,
                 shift: str = "down", stride: int = 2, weight_norm: bool = True) -> None:
        super().__init__((in_channels, out_channels, *kernel_size), out_dim=1,
                         fan_in=out_channels * kernel_size[0] * kernel_size[1], weight_norm=weight_norm)
        # Output column j must come from input column j // stride or further left (down-right) or be
        # centred on it (down): crop nothing, or the (kw - 1) // 2 columns the centring adds.
        self.crop_left = (kernel_size[1] - 1) // 2 if shift == "down" else 0
        self.stride = stride

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Up-sample to `size` (H, W), the resolution of the stage above: output row i comes from
        input row i // stride only, so cropping the bottom keeps the shift for odd sizes too."""
        y = F.conv_transpose2d(x, self.kernel(), self.bias, self.stride)
        height, width = size
        return y[:, :, :height, self.crop_left:self.crop_left + width]


class NetworkInNetwork(_WeightNormed):
    """A 1x1 convolution: a per-pixel linear map of the channels."""

    def __init__(self, in_channels: int, out_channels: int, *, weight_norm: bool = True) -> None:
        super().__init__((out_channels, in_channels, 1, 1), out_dim=0, fan_in=in_channels, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias)


class _Gate(torch.autograd.Function):
    """x + a * sigmoid(b) for (a, b) the two channel halves of h. The gradient for h is written as
    one tensor (autograd would compute the halves apart, then concatenate them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, dim=1)
        gate = torch.sigmoid(b)
        ctx.save_for_backward(a, gate)
        return torch.addcmul(x, a, gate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, gate = ctx.saved_tensors
        grad_h = torch.empty(a.shape[0], 2 * a.shape[1], *a.shape[2:], dtype=grad.dtype, device=grad.device,
                             memory_format=torch.channels_last)
        grad_a, grad_b = grad_h.chunk(2, dim=1)
        torch.mul(grad, gate, out=grad_a)
        # d/db a sigmoid(b) = a sigmoid(b) (1 - sigmoid(b)), times grad: (grad * gate) * a * (1 - gate)
        torch.mul(grad_a, a, out=grad_b)
        grad_b.mul_(1.0 - gate)
        return grad, grad_h


def gate(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The gated residual output x + a * sigmoid(b), (a, b) = h split in channel halves."""
    if torch.is_grad_enabled():
        return _Gate.apply(x, h)
    # No graph to keep: gate h's halves in place, one new tensor only.
    a, b = h.chunk(2, dim=1)
    return torch.addcmul(x, a, b.sigmoid_())


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), where (a, b) = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(concat_elu(skip))))).

    The skip input carries the other stream (ul reads u) or the up pass's activations (down pass).
    """

    def __init__(self, filters: int, *, shift: str, skip_channels: int = 0, dropout: float = 0.5,
                 weight_norm: bool = True) -> None:
        super().__init__()
        kernel_size = (2, 3) if shift == "down" else (2, 2)
        self.conv_in = ShiftedConv2d(2 * filters, filters, kernel_size, shift=shift, weight_norm=weight_norm)
        self.nin_skip = (NetworkInNetwork(2 * skip_channels, filters, weight_norm=weight_norm)
                         if skip_channels else None)
        self.conv_out = ShiftedConv2d(2 * filters, 2 * filters, kernel_size, shift=shift, weight_norm=weight_norm)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(concat_elu(x, self.conv_in.padding), padded=True)
        if self.nin_skip is not None:
            # in place: the convolution's backward does not need its output
            h = h.add_(self.nin_skip(concat_elu(skip)))
        h = concat_elu(h, self.conv_out.padding, dropout=self.dropout if self.training else 0.0)
        return gate(x, self.conv_out(h, padded=True))
