"""3x3 stride-1 'SAME' convs as matmuls: Winograd F(2x2, 3x3), F(4x4, 3x3), F(2,3) by rows, im2col.

VGG16's convolutions are all 3x3, stride 1, 'SAME', NHWC with HWIO kernels (as
``jaxvis/models/vgg16.py`` calls ``flax.linen.Conv``). On a CPU without AVX-512, XLA's
conv runs slower than its matmul (issue 14), so these formulations turn the conv into
matmuls that XLA runs near its matmul rate:

* Winograd F(m x m, 3x3) (Lavin & Gray 2015, "Fast Algorithms for Convolutional Neural
  Networks"): overlapping (m+2)x(m+2) input tiles with stride m are transformed,
  ``V = B^T d B``; the kernel is transformed once per call, ``U = G g G^T``; the
  elementwise product over channels is (m+2)^2 batched matmuls [tiles, Cin] x [Cin, Cout];
  and ``A^T M A`` gives each m x m output tile. F(2x2) needs 16/36 of the direct conv's
  multiplies (2.25x fewer), F(4x4) 36/144 (4x fewer), at some cost in fp32 accuracy.
* Winograd F(2,3) along the width only: 4-wide tiles, 12 thinner matmuls, 2/3 of the
  multiplies, for the large shallow layers where the 2-D tiles cost more than they save.
* im2col: the nine shifted copies of the input side by side, then one matmul.

Every stage is linear and written with slices, adds and ``einsum``, so ``jax.grad``
through im2col and F(4,3) gives the input gradient as matmuls too. Both F(2,3) forms
have a custom VJP instead: the input gradient is another conv of the same form from the
same transformed kernel, faster than autodiff's transposed slices. Which formulation is
fastest per shape is measured by ``benchmarks/conv_forms.py`` and, per CPU, by
``jaxvis/conv_tune.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxvis._types import Array
from jaxvis.errors import JaxvisError

# Lavin & Gray 2015, section 4.1 (F(2x2, 3x3)) and 4.2 (F(4x4, 3x3)): (B^T, G, A^T).
_F2 = (
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
)
_F4 = (
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        np.float64,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        np.float64,
    ),
    np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        np.float64,
    ),
)
TRANSFORMS = {2: _F2, 4: _F4}  # output tile side m -> (B^T, G, A^T)


def _check(x: Array, kernel: Array) -> None:
    """One-line JaxvisError unless x is [N, H, W, C] and kernel is [3, 3, C, Cout]."""
    if x.ndim != 4 or kernel.ndim != 4 or tuple(kernel.shape[:2]) != (3, 3):
        raise JaxvisError(
            f"expected x [N, H, W, C] and a 3x3 HWIO kernel [3, 3, C, Cout]; got x "
            f"{tuple(x.shape)} and kernel {tuple(kernel.shape)}"
        )
    if x.shape[-1] != kernel.shape[2]:
        raise JaxvisError(f"x has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]}")


def _combine(parts: list[Array], matrix: np.ndarray) -> list[Array]:
    """``[sum_j matrix[i, j] * parts[j] for each row i]``, skipping zero coefficients.

    The transform matrices are small and sparse with mostly +-1 entries, so writing the
    products as adds (instead of an einsum over a tiny axis) keeps them elementwise ops
    that XLA fuses with the slicing around them.
    """
    out = []
    for row in matrix:
        acc = None
        for coef, part in zip(row, parts, strict=True):
            if coef == 0:
                continue
            term = part if coef == 1 else -part if coef == -1 else part * part.dtype.type(coef)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _input_tiles(x: Array, m: int, bt: np.ndarray) -> tuple[Array, tuple[int, int]]:
    """``B^T d B`` of every (m+2)x(m+2) tile at stride m: [(m+2)^2, N * th * tw, C].

    The input is zero-padded by 1 on the top and left ('SAME') and enough on the bottom
    and right that th x tw tiles of m outputs cover the map; odd sizes are cropped later.
    """
    n, h, w, c = x.shape
    th, tw = -(-h // m), -(-w // m)
    xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - w), (0, 0)))
    alpha = m + 2

    def taps(arr, axis, count):  # offset a of every tile along axis, a = 0..alpha-1
        return [lax.slice_in_dim(arr, a, a + m * (count - 1) + 1, m, axis) for a in range(alpha)]

    tiles = []
    for row in _combine(taps(xp, 1, th), bt):
        tiles += _combine(taps(row, 2, tw), bt)
    return jnp.stack(tiles).reshape(alpha * alpha, n * th * tw, c), (th, tw)


def _output_tiles(mm: Array, shape: tuple, m: int, at: np.ndarray) -> Array:
    """``A^T M A`` per tile, assembled into the [N, H, W, Cout] map (cropped to H x W)."""
    n, h, w, th, tw = shape
    alpha = m + 2
    mm = mm.reshape(alpha, alpha, n, th, tw, mm.shape[-1])
    rows = _combine([mm[i] for i in range(alpha)], at)  # m x [alpha, n, th, tw, Cout]
    out = [jnp.stack(_combine([r[j] for j in range(alpha)], at), axis=3) for r in rows]
    y = jnp.stack(out, axis=2)  # [n, th, m, tw, m, Cout]
    return y.reshape(n, th * m, tw * m, -1)[:, :h, :w]


def kernel_transform(kernel: Array, m: int = 2) -> Array:
    """``U = G g G^T`` for every (Cin, Cout) pair: [(m+2)^2, Cin, Cout].

    Written as sparse adds like the other transforms: as one ``einsum`` over the 3x3 axes
    XLA:CPU took 25 ms for a 512x512 kernel, against 3 ms this way (measured on the 2-core
    VM, benchmarks/README.md, "Convolution formulations on CPU"), which decided the speed
    of the small deep layers. Kept separate so a caller can hoist it out of a loop.
    """
    g = TRANSFORMS[m][1]
    u = []
    for row in _combine([kernel[a] for a in range(3)], g):
        u += _combine([row[b] for b in range(3)], g)
    return jnp.stack(u)


def _tiles_product(x: Array, u: Array, m: int, contract: str) -> Array:
    """Input tiles of ``x``, times the transformed kernel ``u`` per tile entry
    (``contract``), output transform: one Winograd conv."""
    bt, _, at = TRANSFORMS[m]
    n, h, w, _ = x.shape
    v, (th, tw) = _input_tiles(x, m, bt)
    mm = jnp.einsum(contract, v, u.astype(x.dtype))
    return _output_tiles(mm, (n, h, w, th, tw), m, at)


_FORWARD = "ptc,pcd->ptd"  # U [(m+2)^2, Cin, Cout]
_TRANSPOSED = "ptd,pcd->ptc"  # the same U, contracted over its output channels
# For F(2,3), G with its columns reversed is G with rows 0 and 3 swapped, so the
# transform of the kernel turned by 180 degrees is U with tile entries 0 and 3 swapped
# along both tile axes.
_F2_TURNED = [4 * i + j for i in (3, 1, 2, 0) for j in (3, 1, 2, 0)]


def _with_own_vjp(transform, product, turn):
    """A Winograd conv whose input gradient is the same kind of conv of the cotangent.

    The input gradient of a 3x3 'SAME' conv is the same conv of ``g`` with the kernel
    turned by 180 degrees and its channels swapped, so it is computed from the forward's
    transformed kernel ``u``, turned (``turn(u)``) and contracted over its output
    channels (``product(g, turn(u), transposed=True)``). Autodiff of the forward instead
    transposes every strided slice of the input tiles into a padded full-size map, which
    ran up to 2x slower on the AVX2-only CPU (benchmarks/README.md, "Conv formulations on
    the AVX2-only CPU"). The kernel's gradient, only when it is asked for, is lax.conv's.
    """

    @jax.custom_vjp
    def conv(x, kernel):
        return product(x, transform(kernel), False)

    def fwd(x, kernel):
        u = transform(kernel.value)
        return product(x.value, u, False), (x.value, kernel.value, u, kernel.perturbed)

    def bwd(res, g):
        x, kernel, u, kernel_needed = res
        if isinstance(g, SymbolicZero):
            return None, None
        gx = product(g, turn(u), True)
        if not kernel_needed:
            return gx, None
        _, vjp = jax.vjp(
            lambda k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_NHWC),
            kernel,
        )
        return gx, vjp(g)[0]

    conv.defvjp(fwd, bwd, symbolic_zeros=True)
    return conv


_NHWC = ("NHWC", "HWIO", "NHWC")
_winograd2 = _with_own_vjp(
    lambda kernel: kernel_transform(kernel, 2),
    lambda x, u, transposed: _tiles_product(x, u, 2, _TRANSPOSED if transposed else _FORWARD),
    lambda u: u[np.array(_F2_TURNED)],
)


def kernel_transform_rows(kernel: Array) -> Array:
    """``G g_a`` of each kernel row ``a`` along its 3 columns: [3, 4, Cin, Cout]."""
    g = TRANSFORMS[2][1]
    return jnp.stack([jnp.stack(_combine([kernel[a, b] for b in range(3)], g)) for a in range(3)])


def _rows_product(x: Array, u: Array, transposed: bool) -> Array:
    """F(2,3) along the width only: 4-wide input tiles at stride 2 are transformed by
    ``B^T``; each of the 4 tile entries is the sum over the 3 kernel rows of a
    [N * H * tw, Cin] x [Cin, Cout] matmul of the transformed map shifted by that row;
    ``A^T`` gives each pair of outputs. ``u`` is :func:`kernel_transform_rows`'s,
    contracted over its output channels when ``transposed``."""
    bt, _, at = TRANSFORMS[2]
    n, h, w, _ = x.shape
    tw = -(-w // 2)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 2 * tw + 1 - w), (0, 0)))
    taps = [lax.slice_in_dim(xp, a, a + 2 * (tw - 1) + 1, 2, 2) for a in range(4)]
    u = u.astype(x.dtype)
    contract = "nhtd,cd->nhtc" if transposed else "nhtc,cd->nhtd"
    products = []
    for p, v in enumerate(_combine(taps, bt)):  # v: [N, H + 2, tw, Cin]
        terms = [jnp.einsum(contract, v[:, a : a + h], u[a, p]) for a in range(3)]
        products.append(terms[0] + terms[1] + terms[2])
    y = jnp.stack(_combine(products, at), axis=3)  # [N, H, tw, 2, Cout]
    return y.reshape(n, h, 2 * tw, -1)[:, :, :w]


# The row transform of the turned kernel: the kernel rows reversed, and (as for the 2-D
# transform) tile entries 0 and 3 swapped.
_F2_ROW_TURNED = np.array([3, 1, 2, 0])
_winograd_rows = _with_own_vjp(
    kernel_transform_rows,
    _rows_product,
    lambda u: u[::-1][:, _F2_ROW_TURNED],
)


def conv3x3_winograd(x: Array, kernel: Array, m: int = 2) -> Array:
    """3x3 stride-1 'SAME' convolution (cross-correlation, as ``lax.conv``) by Winograd.

    F(2,3) has its own input gradient (a Winograd conv of the cotangent from the same
    transformed kernel, see ``_winograd2_bwd``); F(4,3) is differentiated by autodiff.

    Args:
      x: [N, H, W, Cin] input, any H, W >= 1.
      kernel: [3, 3, Cin, Cout] HWIO kernel.
      m: output tile side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).

    Returns:
      [N, H, W, Cout], equal to ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")``
      up to rounding.
    """
    _check(x, kernel)
    if m not in TRANSFORMS:
        raise JaxvisError(f"unknown Winograd tile {m!r}; valid: {sorted(TRANSFORMS)}")
    if m == 2:
        return _winograd2(x, kernel)
    return _tiles_product(x, kernel_transform(kernel, m), m, _FORWARD)


def conv3x3_winograd_rows(x: Array, kernel: Array) -> Array:
    """3x3 stride-1 'SAME' convolution by Winograd F(2,3) along the width only.

    12 matmuls [N * H * W/2, Cin] x [Cin, Cout] (4 tile entries x 3 kernel rows): 2/3 of
    the direct conv's multiplies, with a quarter of F(2x2, 3x3)'s tile traffic. Its input
    gradient is the same conv of the cotangent (``_with_own_vjp``). Measured against the
    others by ``benchmarks/conv_forms.py``; it lost at the large shallow shapes it was
    meant for (benchmarks/README.md, "F(2,3) along one axis"), so ``jaxvis/conv_tune.py``
    does not offer it.

    Args:
      x: [N, H, W, Cin] input, any H, W >= 1.
      kernel: [3, 3, Cin, Cout] HWIO kernel.
    """
    _check(x, kernel)
    return _winograd_rows(x, kernel)


def conv3x3_im2col(x: Array, kernel: Array) -> Array:
    """3x3 stride-1 'SAME' convolution as one [N*H*W, 9*Cin] x [9*Cin, Cout] matmul.

    Args:
      x: [N, H, W, Cin] input.
      kernel: [3, 3, Cin, Cout] HWIO kernel.
    """
    _check(x, kernel)
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, a : a + h, b : b + w] for a in range(3) for b in range(3)], -1)
    y = cols.reshape(n * h * w, 9 * c) @ kernel.reshape(9 * c, -1).astype(x.dtype)
    return y.reshape(n, h, w, -1)
