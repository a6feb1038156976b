"""BatchAugment: exact geometry of each knob, fill modes, and the random mode's contract."""

from __future__ import annotations

import math

import pytest
import torch

from trialdeck.engine.presets.schema import AugmentConfig
from trialdeck.engine.training.augment import BatchAugment

ATOL = 1e-5


def make(fill_mode: str = "nearest", fill: torch.Tensor | float = 0.0, **knobs) -> BatchAugment:
    return BatchAugment(AugmentConfig(fill_mode=fill_mode, **knobs), fill=fill)


def warp(aug: BatchAugment, x: torch.Tensor, **given) -> torch.Tensor:
    """apply_params with identity defaults; each given value is broadcast to the batch."""
    b = x.shape[0]
    params = {"angle_deg": 0.0, "tx_frac": 0.0, "ty_frac": 0.0, "shear_deg": 0.0, "zx": 1.0, "zy": 1.0, "flip": 0.0}
    params.update(given)
    tensors = {k: torch.as_tensor(v, dtype=torch.float32).expand(b).clone() for k, v in params.items()}
    tensors["flip"] = tensors["flip"].bool()
    return aug.apply_params(x, **tensors)


def coord_image(h: int, w: int, batch: int = 1) -> torch.Tensor:
    """Channel 0 holds each pixel's centred x, channel 1 its centred y (y downwards).

    Bilinear sampling of a linear ramp is exact, so away from the border the output
    channels read back exactly which input point each output pixel sampled.
    """
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = torch.stack((xs - (w - 1) / 2, ys - (h - 1) / 2))
    return img.expand(batch, 2, h, w).clone()


def centred_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return xs - (w - 1) / 2, ys - (h - 1) / 2


def inside(xi: torch.Tensor, yi: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Output pixels whose sample point lies within the input's pixel centres (no fill involved)."""
    return (xi.abs() <= (w - 1) / 2 - 1e-6) & (yi.abs() <= (h - 1) / 2 - 1e-6)


# -- flip ---------------------------------------------------------------------------


def test_flip_mirrors_exactly_and_no_flip_is_identity():
    x = torch.randn(3, 2, 5, 7)
    aug = make(horizontal_flip=True)
    torch.testing.assert_close(warp(aug, x, flip=1.0), x.flip(-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(warp(aug, x, flip=0.0), x, atol=ATOL, rtol=0)


def test_flip_is_per_sample():
    x = torch.randn(2, 1, 6, 6)
    aug = make(horizontal_flip=True)
    flip = torch.tensor([True, False])
    zeros, ones = torch.zeros(2), torch.ones(2)
    out = aug.apply_params(x, zeros, zeros, zeros, zeros, ones, ones, flip)
    torch.testing.assert_close(out[0], x[0].flip(-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=ATOL, rtol=0)


# -- shifts -------------------------------------------------------------------------


def test_width_shift_moves_content_right_by_exact_pixels():
    # Non-square on purpose: the shift must scale with the width, not the height.
    x = torch.rand(2, 3, 6, 10)
    x[:, :, :, 3] = 5.0  # one bright column
    out = warp(make(), x, tx_frac=0.2)  # 0.2 * 10 px = 2 px to the right
    torch.testing.assert_close(out[..., 2:], x[..., :-2], atol=ATOL, rtol=0)
    assert torch.allclose(out[..., 5], torch.tensor(5.0), atol=ATOL)
    # Negative moves left.
    out = warp(make(), x, tx_frac=-0.2)
    torch.testing.assert_close(out[..., :-2], x[..., 2:], atol=ATOL, rtol=0)
    assert torch.allclose(out[..., 1], torch.tensor(5.0), atol=ATOL)


def test_height_shift_moves_content_down_by_exact_pixels():
    x = torch.rand(2, 3, 10, 6)
    x[:, :, 4, :] = 5.0  # one bright row
    out = warp(make(), x, ty_frac=0.3)  # 0.3 * 10 px = 3 px down
    torch.testing.assert_close(out[..., 3:, :], x[..., :-3, :], atol=ATOL, rtol=0)
    assert torch.allclose(out[..., 7, :], torch.tensor(5.0), atol=ATOL)
    out = warp(make(), x, ty_frac=-0.1)
    torch.testing.assert_close(out[..., :-1, :], x[..., 1:, :], atol=ATOL, rtol=0)


# -- rotation ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("angle,k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_matches_rot90_counter_clockwise(size: int, angle: float, k: int):
    x = torch.randn(2, 3, size, size)
    out = warp(make(), x, angle_deg=angle)
    torch.testing.assert_close(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_rotation_small_angle_samples_the_rotated_point():
    h, w, a = 21, 25, 20.0
    out = warp(make(), coord_image(h, w), angle_deg=a)[0]
    xo, yo = centred_grid(h, w)
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    xi, yi = c * xo - s * yo, s * xo + c * yo  # Keras' output-to-input rotation
    m = inside(xi, yi, h, w)
    assert m.sum() > 200
    torch.testing.assert_close(out[0][m], xi[m], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1][m], yi[m], atol=1e-4, rtol=0)


# -- zoom ----------------------------------------------------------------------------


def test_zoom_below_one_zooms_in():
    # Keras convention: zx, zy scale output coordinates into input coordinates,
    # so 0.5 shows the central half of the image at twice the size.
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0  # 2x2 bright square at the centre
    out = warp(make(), x, zx=0.5, zy=0.5)[0, 0]
    bright = out > 0.5
    assert bright.sum(dim=1).max() == 4 and bright.sum(dim=0).max() == 4
    assert bright[2:6, 2:6].all()


def test_zoom_above_one_zooms_out_and_axes_are_independent():
    x = torch.zeros(1, 1, 16, 16)
    x[..., 6:10, 6:10] = 1.0  # 4x4 square
    out = warp(make(fill_mode="constant"), x, zx=2.0, zy=1.0)[0, 0]
    bright = out > 0.5
    assert bright.sum(dim=1).max() == 2  # width halves
    assert bright.sum(dim=0).max() == 4  # height unchanged


def test_zoom_reads_scaled_coordinates():
    h, w = 12, 16
    out = warp(make(), coord_image(h, w), zx=0.8, zy=1.25)[0]
    xo, yo = centred_grid(h, w)
    xi, yi = 0.8 * xo, 1.25 * yo
    m = inside(xi, yi, h, w)
    torch.testing.assert_close(out[0][m], xi[m], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1][m], yi[m], atol=1e-4, rtol=0)


# -- shear ---------------------------------------------------------------------------


def test_shear_reads_keras_sheared_coordinates():
    h, w, s = 15, 19, 30.0
    out = warp(make(), coord_image(h, w), shear_deg=s)[0]
    xo, yo = centred_grid(h, w)
    # Keras' shear matrix [[1, -sin s], [0, cos s]], output to input.
    xi, yi = xo - math.sin(math.radians(s)) * yo, math.cos(math.radians(s)) * yo
    m = inside(xi, yi, h, w)
    assert m.sum() > 100
    torch.testing.assert_close(out[0][m], xi[m], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1][m], yi[m], atol=1e-4, rtol=0)


def test_shear_moves_a_pixel_where_the_formula_says():
    h, w, s = 21, 21, 30.0
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[0, 0, 14, 10] = 1.0  # 4 px below the centre
    out = warp(make(fill_mode="constant"), x, shear_deg=s)[0, 0]
    # Forward map (inverse of the matrix): x_out = x_in + tan(s) y_in, y_out = y_in / cos(s).
    t = math.radians(s)
    want_x, want_y = 0 + math.tan(t) * 4, 4 / math.cos(t)
    xo, yo = centred_grid(h, w)
    # The bilinear footprint of a point is a tent whose centroid is the mapped point.
    got_x, got_y = (out * xo).sum() / out.sum(), (out * yo).sum() / out.sum()
    assert got_x.item() == pytest.approx(want_x, abs=0.05)
    assert got_y.item() == pytest.approx(want_y, abs=0.05)
    assert want_x > 2  # content below the centre slides right


# -- all knobs against an independent pixel-space reference ---------------------------


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_combined_matches_pixel_space_reference(fill_mode: str):
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    h, w, b = 9, 13, 6
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(b, 2, h, w, generator=gen, dtype=torch.float64)
    aug = make(fill_mode, fill=0.3, rotation=40, width_shift=0.3, height_shift=0.3, shear=25, zoom=0.3,
               horizontal_flip=True)
    p = aug.sample_params(b, "cpu", gen)
    out = aug.apply_params(x, *p)

    xo, yo = (g.numpy() for g in centred_grid(h, w))
    mode = {"nearest": "nearest", "reflect": "reflect", "constant": "constant"}[fill_mode]  # Keras calls scipy's constant
    for i in range(b):
        a, s = math.radians(p.angle_deg[i]), math.radians(p.shear_deg[i])
        zx, zy = float(p.zx[i]), float(p.zy[i])
        # Documented convention: input = R S Z (F p - t).
        px = (-xo if p.flip[i] else xo) - float(p.tx_frac[i]) * w
        py = yo - float(p.ty_frac[i]) * h
        qx, qy = zx * px, zy * py  # zoom
        qx, qy = qx - math.sin(s) * qy, math.cos(s) * qy  # shear
        qx, qy = math.cos(a) * qx - math.sin(a) * qy, math.sin(a) * qx + math.cos(a) * qy  # rotation
        coords = np.stack((qy + (h - 1) / 2, qx + (w - 1) / 2))
        for ch in range(2):
            ref = ndimage.map_coordinates(x[i, ch].numpy(), coords, order=1, mode=mode, cval=0.3)
            np.testing.assert_allclose(out[i, ch].numpy(), ref, atol=1e-4)


# -- fill modes ----------------------------------------------------------------------


def columns_image(c: int = 2) -> torch.Tensor:
    """Every column has its own values, so each filled column says where it came from."""
    return torch.arange(c * 4 * 8, dtype=torch.float32).reshape(1, c, 4, 8) / 10.0


def test_fill_nearest_replicates_the_edge_column():
    x = columns_image()
    out = warp(make("nearest"), x, tx_frac=3 / 8)
    torch.testing.assert_close(out[..., 3:], x[..., :5], atol=ATOL, rtol=0)
    for col in range(3):
        torch.testing.assert_close(out[..., col], x[..., 0], atol=ATOL, rtol=0)


def test_fill_constant_uses_the_scalar_fill():
    x = columns_image()
    out = warp(make("constant", fill=-0.7), x, tx_frac=3 / 8)
    torch.testing.assert_close(out[..., 3:], x[..., :5], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[..., :3], torch.full_like(out[..., :3], -0.7), atol=ATOL, rtol=0)


def test_fill_constant_uses_a_per_channel_fill():
    x = columns_image()
    fill = torch.tensor([-1.5, 2.5]).view(2, 1, 1)
    out = warp(make("constant", fill=fill), x, ty_frac=-0.25)  # 1 row up: the bottom row is vacated
    torch.testing.assert_close(out[..., :3, :], x[..., 1:, :], atol=ATOL, rtol=0)
    assert torch.allclose(out[0, 0, 3], torch.tensor(-1.5)) and torch.allclose(out[0, 1, 3], torch.tensor(2.5))


def test_fill_constant_has_no_half_pixel_seam():
    """A 0.3 px shift right: output column 0 reads the input at x = -0.3, outside the first pixel
    centre, so it is the fill exactly (Keras, scipy), not 70% edge pixel and 30% fill."""
    x = columns_image()
    out = warp(make("constant", fill=-9.0), x, tx_frac=0.3 / 8)
    assert torch.equal(out[..., 0], torch.full_like(out[..., 0], -9.0))
    torch.testing.assert_close(out[..., 1], 0.3 * x[..., 0] + 0.7 * x[..., 1], atol=ATOL, rtol=0)


def keras_matrix(p, i: int, h: int, w: int):
    """scipy.ndimage.affine_transform's (matrix, offset) in (row, col) for sample i of `p`, built
    from the documented convention input = R S Z (F p - t) in centred pixel coordinates."""
    import numpy as np

    a, s = math.radians(float(p.angle_deg[i])), math.radians(float(p.shear_deg[i]))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, -math.sin(s)], [0.0, math.cos(s)]])
    zoom = np.diag([float(p.zx[i]), float(p.zy[i])])
    flip = np.diag([-1.0 if bool(p.flip[i]) else 1.0, 1.0])
    m = rot @ shear @ zoom  # (x, y) order
    t = np.array([float(p.tx_frac[i]) * w, float(p.ty_frac[i]) * h])
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    matrix = swap @ m @ flip @ swap
    offset = swap @ (centre - m @ flip @ centre - m @ t)
    return matrix, offset


def test_fill_constant_matches_scipy_affine_transform_on_a_non_square_image():
    """Keras' ImageDataGenerator calls scipy.ndimage.affine_transform(order=1, mode="constant");
    every knob, on a 7x11 image, gives its output, seam and all (issue 15)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    h, w, b = 7, 11, 16
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(b, 1, h, w, generator=gen, dtype=torch.float64) + 1.0
    aug = make("constant", fill=-2.5, rotation=35, width_shift=0.25, height_shift=0.3, shear=20, zoom=0.35,
               horizontal_flip=True)
    p = aug.sample_params(b, "cpu", gen)
    out = aug.apply_params(x, *p)
    filled = 0
    for i in range(b):
        matrix, offset = keras_matrix(p, i, h, w)
        ref = ndimage.affine_transform(x[i, 0].numpy(), matrix, offset=offset, order=1, mode="constant", cval=-2.5)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-6)
        filled += int((ref == -2.5).sum())
    assert 0 < filled < b * h * w  # both the fill and the image are exercised


def test_fill_reflect_mirrors_half_sample_symmetric():
    x = columns_image()
    out = warp(make("reflect"), x, tx_frac=3 / 8)
    torch.testing.assert_close(out[..., 3:], x[..., :5], atol=ATOL, rtol=0)
    # abcd shifted right by 3 reads cba|abcd: columns 2, 1, 0 mirrored about the edge.
    torch.testing.assert_close(out[..., :3], x[..., [2, 1, 0]], atol=ATOL, rtol=0)
    out = warp(make("reflect"), x, tx_frac=-3 / 8)
    torch.testing.assert_close(out[..., 5:], x[..., [7, 6, 5]], atol=ATOL, rtol=0)


# -- random mode -----------------------------------------------------------------------

ARTICLE = {"rotation": 20, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2, "zoom": 0.2,
           "horizontal_flip": True}


def test_seeded_generator_is_reproducible_and_seed_matters():
    x = torch.rand(16, 1, 28, 28)
    aug = make(**ARTICLE)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_samples_in_a_batch_get_different_parameters():
    x = torch.rand(1, 1, 28, 28).expand(32, 1, 28, 28).contiguous()
    out = make(**ARTICLE)(x, torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat)
    off_diag = dist[~torch.eye(32, dtype=torch.bool)]
    assert off_diag.min() > 1e-3  # no two samples received the same warp
    assert not torch.allclose(out, x)


def test_inactive_config_returns_the_input_object():
    x = torch.rand(4, 3, 8, 8)
    assert make()(x) is x
    assert make(fill_mode="reflect", cval=3.0)(x, torch.Generator().manual_seed(0)) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_preserved(dtype: torch.dtype):
    x = torch.rand(5, 3, 12, 9).to(dtype)
    out = make(**ARTICLE)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_a_cuda_generator():
    x = torch.rand(64, 1, 28, 28, device="cuda")
    aug = make(**ARTICLE)
    a = aug(x, torch.Generator(device="cuda").manual_seed(1))
    b = aug(x, torch.Generator(device="cuda").manual_seed(1))
    assert a.device == x.device and a.shape == x.shape
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="generator is on cpu"):
        aug(x, torch.Generator().manual_seed(1))


def test_integer_input_is_refused_with_a_reason():
    with pytest.raises(TypeError, match="floating-point"):
        make(**ARTICLE)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


# -- ranges -----------------------------------------------------------------------------


def test_sampled_parameters_stay_within_keras_ranges():
    aug = make(rotation=20, width_shift=0.2, height_shift=0.1, shear=15, zoom=0.3, horizontal_flip=True)
    p = aug.sample_params(20_000, "cpu", torch.Generator().manual_seed(0))
    for value, bound in ((p.angle_deg, 20), (p.tx_frac, 0.2), (p.ty_frac, 0.1), (p.shear_deg, 15)):
        assert value.abs().max() <= bound
        assert value.max() > 0.99 * bound and value.min() < -0.99 * bound  # fills the range
        assert abs(value.mean().item()) < 0.02 * bound  # symmetric
    for z in (p.zx, p.zy):
        assert z.min() >= 0.7 and z.max() <= 1.3 and z.min() < 0.71 and z.max() > 1.29
    assert not torch.equal(p.zx, p.zy)  # drawn independently
    assert 0.48 < p.flip.float().mean().item() < 0.52
    off = make(rotation=20).sample_params(1000, "cpu", torch.Generator().manual_seed(0))
    assert not off.flip.any() and torch.all(off.zx == 1) and torch.all(off.tx_frac == 0)


def test_random_rotations_measured_from_output_stay_within_bounds():
    # End to end through __call__: read each sample's angle off a coordinate ramp.
    h = w = 33
    out = make(rotation=20)(coord_image(h, w, batch=2000).float(), torch.Generator().manual_seed(1))
    c = h // 2
    cos_a = out[:, 0, c, c + 1] - out[:, 0, c, c]
    sin_a = out[:, 1, c, c + 1] - out[:, 1, c, c]
    angles = torch.rad2deg(torch.atan2(sin_a, cos_a))
    assert angles.abs().max() <= 20.0 + 1e-3
    assert angles.abs().max() > 19.0
    assert (angles > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
