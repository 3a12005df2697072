"""The conv formulations of jaxvis/models/winograd.py against ``lax.conv``, and their benchmark.

Each formulation must give the direct conv's output and input gradient (fp32, under jit)
on odd and 1x1 maps; a wrong transform matrix must be caught; and the benchmark
(benchmarks/conv_forms.py) must run end to end in ``--tiny`` mode.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvis.errors import JaxvisError
from jaxvis.models import winograd

ROOT = Path(__file__).resolve().parent.parent
FORMS = {
    "F(2,3)": functools.partial(winograd.conv3x3_winograd, m=2),
    "F(4,3)": functools.partial(winograd.conv3x3_winograd, m=4),
    "F(2,3) rows": winograd.conv3x3_winograd_rows,
    "im2col": winograd.conv3x3_im2col,
}
# (N, H, W, Cin, Cout): odd and unequal sides, 1x1 and 2x3 maps, sides below a tile.
SHAPES = [(2, 7, 9, 5, 6), (1, 1, 1, 4, 3), (1, 2, 3, 3, 8), (1, 12, 12, 16, 16)]
TOL = {"F(2,3)": 1e-5, "F(4,3)": 3e-5, "F(2,3) rows": 1e-5, "im2col": 1e-5}


def direct(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def inputs(shape, seed=0):
    n, h, w, cin, cout = shape
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((n, h, w, cout)), jnp.float32)
    return x, kernel, cot


@functools.cache
def fwd_and_grad(form):
    """Jitted (output, input gradient for a random cotangent) of one conv."""

    def run(x, kernel, cot):
        y, vjp = jax.vjp(lambda x: form(x, kernel), x)
        return y, vjp(cot)[0]

    return jax.jit(run)


def rel_err(a, b) -> float:
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(FORMS))
def test_equals_direct_conv(name, shape):
    x, kernel, cot = inputs(shape)
    y, g = fwd_and_grad(FORMS[name])(x, kernel, cot)
    y0, g0 = fwd_and_grad(direct)(x, kernel, cot)
    assert y.shape == y0.shape and g.shape == x.shape
    assert rel_err(y, y0) < TOL[name]
    assert rel_err(g, g0) < TOL[name]


def test_grad_of_a_scalar_loss():
    """``jax.grad`` of a nonlinear loss through the conv, as the ascent step takes it."""
    x, kernel, _ = inputs((1, 9, 9, 4, 4))

    def loss(conv):
        return jax.jit(jax.grad(lambda x: jnp.tanh(conv(x, kernel)).sum()))(x)

    assert rel_err(loss(FORMS["F(2,3)"]), loss(direct)) < 1e-5


@pytest.mark.parametrize("name", ["F(2,3)", "F(2,3) rows"])
def test_f23_custom_vjp_gives_both_gradients_under_vmap(name):
    """F(2,3)'s own VJP: the input gradient (a Winograd conv of the cotangent from the
    turned U) and, when asked for, the kernel's, match lax.conv on an odd-sized map."""
    x, kernel, cot = inputs((2, 7, 10, 5, 6))

    def grads(conv):
        run = jax.vmap(jax.vjp, in_axes=(None, 0, None))
        _, vjp = run(lambda x, k: conv(x[None], k)[0], x, kernel)
        return jax.vmap(lambda f, c: f(c))(vjp, cot)

    gx, gk = grads(FORMS[name])
    gx0, gk0 = grads(direct)
    assert rel_err(gx, gx0) < 1e-5 and rel_err(gk, gk0) < 1e-5


def test_the_turn_of_u_is_what_makes_the_input_gradient():
    """The backward's pieces: U turned by 180 degrees gives lax.conv's input gradient;
    U as it is (a wrong turn) does not, so the gradient test above can fail."""
    x, kernel, cot = inputs(SHAPES[0])
    _, g0 = fwd_and_grad(direct)(x, kernel, cot)
    u = winograd.kernel_transform(kernel, 2)
    for turn, ok in ((winograd._F2_TURNED, True), (list(range(16)), False)):
        g = winograd._tiles_product(cot, u[np.array(turn)], 2, winograd._TRANSPOSED)
        assert (rel_err(g, g0) < 1e-5) == ok


def test_the_turn_of_the_row_transform_is_what_makes_the_input_gradient():
    """The same for F(2,3) by rows: kernel rows reversed and tile entries 0 and 3 swapped
    give the input gradient; either half of the turn alone does not."""
    x, kernel, cot = inputs(SHAPES[0])
    _, g0 = fwd_and_grad(direct)(x, kernel, cot)
    u = winograd.kernel_transform_rows(kernel)
    swap = winograd._F2_ROW_TURNED
    for turned, ok in ((u[::-1][:, swap], True), (u[:, swap], False), (u[::-1], False)):
        g = winograd._rows_product(cot, turned, transposed=True)
        assert (rel_err(g, g0) < 1e-5) == ok


@pytest.mark.parametrize("m", sorted(winograd.TRANSFORMS))
def test_wrong_transform_is_caught(monkeypatch, m):
    """The check above fails when one entry of a transform matrix is wrong."""
    bt, g, at = (a.copy() for a in winograd.TRANSFORMS[m])
    g[1, 1] *= -1
    monkeypatch.setitem(winograd.TRANSFORMS, m, (bt, g, at))
    x, kernel, _ = inputs(SHAPES[0])
    assert rel_err(winograd.conv3x3_winograd(x, kernel, m), direct(x, kernel)) > 1e-2
    if m == 2:  # F(2,3) by rows reads the same matrices
        assert rel_err(winograd.conv3x3_winograd_rows(x, kernel), direct(x, kernel)) > 1e-2


@pytest.mark.parametrize(
    "x_shape, k_shape",
    [((7, 7, 3), (3, 3, 3, 4)), ((1, 7, 7, 3), (5, 5, 3, 4)), ((1, 7, 7, 3), (3, 3, 2, 4))],
)
def test_bad_shapes_raise(x_shape, k_shape):
    for form in FORMS.values():
        with pytest.raises(JaxvisError):
            form(jnp.zeros(x_shape), jnp.zeros(k_shape))


def test_unknown_tile_raises():
    with pytest.raises(JaxvisError, match="valid: \\[2, 4\\]"):
        winograd.conv3x3_winograd(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), m=3)


def test_replaced_vgg16_matches_the_stock_model():
    """The benchmark's patch reaches every VGG16 conv and keeps the model's numbers."""
    import jaxvis
    from benchmarks import conv_forms_net as net

    model = jaxvis.vgg16(None)
    stock = net.net_case(model, "block1_conv2", 32, 1, net.STOCK)
    case = net.net_case(model, "block1_conv2", 32, 1, "im2col")
    assert stock.hlo_convs > 0 and case.hlo_convs == 0
    err = net.net_accuracy(stock, case)
    assert err["objective_rel_err"] < 1e-5 and err["grad_rel_max"] < 1e-5


def test_engine_block_with_convs_replaced_keeps_its_numbers():
    """conv_forms part 3: the patch reaches the engine's real block (fewer convs in the
    compiled program) and its first block's objective values stay the stock block's."""
    from benchmarks import ceilings, conv_forms

    block1_conv1_by_im2col = [
        {"size": 32, "batch": 1, "side": 32, "cin": 3, "cout": 64, "form": "im2col", "speedup": 9}
    ]
    kernels = ceilings.ceiling_kernels(jnp.float32, tiny=True)
    rows, _ = conv_forms.part3("tiny", kernels, block1_conv1_by_im2col, "random")
    stock, forms = rows
    assert (stock["variant"], forms["variant"]) == (conv_forms.STOCK, conv_forms.PER_SHAPE)
    assert forms["hlo_convs"] < stock["hlo_convs"]
    assert forms["values_rel_err"] < 1e-4


@pytest.mark.parametrize("text", ["not json", '{"shapes": [{"size": 32}]}', '{"network": []}'])
def test_shapes_from_a_wrong_file_is_one_line_and_exit_2(tmp_path, capsys, text):
    from benchmarks import conv_forms

    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        conv_forms.main(["--tiny", "--no-save", "--shapes-from", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--shapes-from" in err and "batch, cin, cout, form, side, size, speedup" in err
