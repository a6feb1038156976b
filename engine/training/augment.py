"""Batched, on-device image augmentation with Keras ImageDataGenerator semantics.

One job: turn an `AugmentConfig` (the article's rotation / shift / shear / zoom /
horizontal_flip / fill_mode knobs) into a function that augments a whole
(B, C, H, W) batch with fresh random parameters per sample, using one
`F.affine_grid` and one `F.grid_sample` call and no host syncs, so it runs at
full speed on whatever device the data already lives on.

Geometry, in pixel coordinates centred on the image centre, x to the right,
y downwards (the conventions the tests pin):

- rotation `angle_deg > 0` turns the content counter-clockwise as seen on
  screen, as Keras does (90 degrees equals `torch.rot90(x, 1, (-2, -1))`);
- shear `shear_deg` is Keras' matrix: output (x, y) reads the input at
  (x - sin(s) y, cos(s) y), so content below the centre slides right;
- zoom `zx, zy` multiply output coordinates to get input coordinates, as in
  Keras: a factor < 1 zooms in (0.5 shows the centre half, twice as large);
- shifts `tx_frac, ty_frac` are fractions of the width / height: positive moves
  the content right / down by exactly `tx_frac * W` / `ty_frac * H` pixels.
  (Keras reads the input at +shift, i.e. moves content the other way; the
  random ranges are symmetric, so the distribution is the same);
- order: zoom, shear and rotation about the centre, then the shift, then the
  horizontal flip (Keras also flips after the affine warp). Keras applies the
  shift before rotating; here it comes after, so a shift is always exactly the
  stated number of output pixels.

Fill modes: nearest = replicate the edge ('border'), reflect = half-sample
symmetric `dcba|abcd|dcba` ('reflection' with align_corners=False), constant =
the `fill` value wherever the sample point falls outside the input's pixel
centres, and nothing of it inside them: exactly where Keras (and scipy.ndimage's
`constant` mode, which Keras calls) fills, with no half-pixel seam blended
between the edge pixel and the fill. `fill` is in the tensor's own
(normalised) units; converting the preset's raw-pixel `cval` is the caller's
job because only it knows the normalisation. All of it is in pixel units, so
every knob means the same on a non-square image (shifts are fractions of
their own side; rotation and shear turn pixels, not the unit square).

Invariants: `cfg.active` false means the input object is returned untouched;
the output has the input's shape, dtype and device; with a seeded generator the
result is reproducible.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from trialdeck.engine.presets.schema import AugmentConfig

__all__ = ["AugmentParams", "BatchAugment"]

_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "border"}
_DEG = math.pi / 180.0
_EDGE = 1e-6
"""Pixels per pixel of image size: a sample point this close outside the edge still reads the
edge pixel (a float32 grid puts an unmoved edge up to ~3e-8 * size px off)."""


class AugmentParams(NamedTuple):
    """Per-sample transform parameters, each a tensor of shape (B,)."""

    angle_deg: torch.Tensor
    tx_frac: torch.Tensor
    ty_frac: torch.Tensor
    shear_deg: torch.Tensor
    zx: torch.Tensor
    zy: torch.Tensor
    flip: torch.Tensor  # bool


class BatchAugment:
    """Random affine augmentation of a (B, C, H, W) float batch, one warp per batch."""

    def __init__(self, cfg: AugmentConfig, fill: torch.Tensor | float = 0.0) -> None:
        if cfg.fill_mode not in _PADDING:
            raise ValueError(f"fill_mode must be one of {sorted(_PADDING)}, got {cfg.fill_mode!r}")
        self.cfg = cfg
        self.fill = fill
        # Per-(device, dtype) copy of a tensor fill, so a CPU-made fill is not
        # re-uploaded to the GPU on every batch.
        self._fill_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    # -- random parameters ------------------------------------------------------

    def sample_params(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> AugmentParams:
        """Draw one set of parameters per sample on `device` (the generator must live there).

        All seven uniforms are drawn in one call whatever the config, so the random
        stream consumed per batch does not depend on which knobs are on.
        """
        cfg = self.cfg
        u = torch.rand((7, batch), device=device, generator=generator, dtype=torch.float32)
        s = u[:6] * 2.0 - 1.0  # uniform in [-1, 1)
        return AugmentParams(
            angle_deg=s[0] * cfg.rotation,
            tx_frac=s[1] * cfg.width_shift,
            ty_frac=s[2] * cfg.height_shift,
            shear_deg=s[3] * cfg.shear,
            zx=1.0 + s[4] * cfg.zoom,
            zy=1.0 + s[5] * cfg.zoom,
            flip=(u[6] < 0.5) if cfg.horizontal_flip else torch.zeros(batch, dtype=torch.bool, device=device),
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.cfg.active:
            return x
        if generator is not None and generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the batch is on {x.device}; "
                f"make it with torch.Generator(device={str(x.device)!r})"
            )
        return self.apply_params(x, *self.sample_params(x.shape[0], x.device, generator))

    # -- deterministic warp -----------------------------------------------------

    @staticmethod
    def theta(
        height: int,
        width: int,
        angle_deg: torch.Tensor,
        tx_frac: torch.Tensor,
        ty_frac: torch.Tensor,
        shear_deg: torch.Tensor,
        zx: torch.Tensor,
        zy: torch.Tensor,
        flip: torch.Tensor,
    ) -> torch.Tensor:
        """The (B, 2, 3) `affine_grid` matrices for the given per-sample parameters.

        In centred pixel coordinates the output point p reads the input at
        M (Fp - t), with M = R S Z (Keras' rotation, shear and zoom, output to
        input), t the shift in pixels and F the flip. `affine_grid` with
        align_corners=False uses n = D p, D = diag(2/W, 2/H), so
        theta = [D M F D^-1 | -D M t].
        """
        a = angle_deg.float() * _DEG
        sh = shear_deg.float() * _DEG
        zx, zy = zx.float(), zy.float()
        cos_a, sin_a = torch.cos(a), torch.sin(a)
        # M = R [[c, -s], [s, c]] @ S [[1, s01], [0, s11]] @ Z diag(zx, zy)
        s01, s11 = -torch.sin(sh), torch.cos(sh)
        m00 = cos_a * zx
        m01 = (cos_a * s01 - sin_a * s11) * zy
        m10 = sin_a * zx
        m11 = (sin_a * s01 + cos_a * s11) * zy
        # Shift in pixels; the -D M t column simplifies to -M_ij * t_j * 2/size_i.
        tx = tx_frac.float() * width
        ty = ty_frac.float() * height
        sign = 1.0 - 2.0 * flip.float()  # -1 where flipped: F = diag(sign, 1)
        r = height / width  # D M D^-1 scales off-diagonals by d_i / d_j
        theta = torch.stack(
            (
                torch.stack((m00 * sign, m01 * r, -(m00 * tx + m01 * ty) * (2.0 / width)), dim=-1),
                torch.stack((m10 * sign / r, m11, -(m10 * tx + m11 * ty) * (2.0 / height)), dim=-1),
            ),
            dim=-2,
        )
        return theta

    def apply_params(
        self,
        x: torch.Tensor,
        angle_deg: torch.Tensor,
        tx_frac: torch.Tensor,
        ty_frac: torch.Tensor,
        shear_deg: torch.Tensor,
        zx: torch.Tensor,
        zy: torch.Tensor,
        flip: torch.Tensor,
    ) -> torch.Tensor:
        """Warp `x` (B, C, H, W) with the given per-sample parameters (each shape (B,))."""
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point batch, got {x.dtype}; convert (and normalise) first")
        b, _, h, w = x.shape
        # Half-precision grids put 28 px images off by a tenth of a pixel; warp in fp32.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        theta = self.theta(h, w, angle_deg, tx_frac, ty_frac, shear_deg, zx, zy, flip).to(work.dtype)
        grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
        mode = self.cfg.fill_mode
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode=_PADDING[mode], align_corners=False)
        if mode == "constant":
            # scipy's `constant`: outside [0, size - 1] in pixel-centre coordinates is the fill,
            # inside is interpolated from real pixels only (align_corners=False: p = ((g + 1) size - 1) / 2).
            px = (grid[..., 0] + 1.0) * (w / 2.0) - 0.5
            py = (grid[..., 1] + 1.0) * (h / 2.0) - 0.5
            tol = _EDGE * max(h, w)
            outside = (px < -tol) | (px > w - 1 + tol) | (py < -tol) | (py > h - 1 + tol)
            out = torch.where(outside.unsqueeze(1), self._fill_on(work), out)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _fill_on(self, x: torch.Tensor) -> torch.Tensor | float:
        if not isinstance(self.fill, torch.Tensor):
            return float(self.fill)
        key = (x.device, x.dtype)
        cached = self._fill_cache.get(key)
        if cached is None:
            cached = self.fill.to(device=x.device, dtype=x.dtype)
            self._fill_cache[key] = cached
        return cached
