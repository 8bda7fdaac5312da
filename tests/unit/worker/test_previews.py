"""Live previews (serve_app/worker/previews.py) on the tiny model through the engine: one JPEG per step,
at most 256 px, the same pixels with or without them; and the projection check against a VAE."""

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.worker.previews import FIT_R2, WAN21_BIAS, WAN21_RGB, Previewer, Projection
from tests.helpers import photo


def test_one_preview_per_step_small_jpegs_and_the_same_result(engine, tiny):
    image = photo(320, 192)
    plain = engine.generate(tiny, [image], "make the sky blue", seed=3)
    previews = []
    with_previews = engine.generate(tiny, [image], "make the sky blue", seed=3,
                                    on_preview=lambda step, jpeg: previews.append((step, jpeg)))
    assert np.array_equal(np.asarray(plain), np.asarray(with_previews))  # previews never change the result
    assert [step for step, _ in previews] == list(range(1, tiny.steps + 1))
    for _, jpeg in previews:
        shown = Image.open(io.BytesIO(jpeg))
        assert shown.format == "JPEG" and max(shown.size) <= 256
        # the preview has the result's shape (latents are 1/8 of the image, previews at most 256)
        assert abs(shown.size[0] / shown.size[1] - plain.size[0] / plain.size[1]) < 0.1


def test_the_projection_is_checked_against_this_vae(engine, tiny):
    engine.ensure(tiny)
    projection = engine.preview_projection()
    assert projection is engine.preview_projection()  # made once per base
    # The tiny model's VAE is random: the published Wan 2.1 factors do not describe it, so the
    # engine fitted its own, and they describe it better than the published ones do.
    latents, target = Projection.calibration(engine.pipe.vae, "cpu", torch.float32)
    z = latents.permute(0, 2, 3, 1).reshape(-1, 16)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)

    def r2(factors, bias):
        predicted = z @ torch.tensor(factors) + torch.tensor(bias)
        return float(1 - ((predicted - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())

    published = r2(WAN21_RGB, WAN21_BIAS)
    assert published < FIT_R2 and projection.source == "fitted"
    assert projection.r2 == pytest.approx(r2(projection.factors, projection.bias), abs=1e-4)
    assert projection.r2 > published


def test_a_vae_the_published_factors_describe_keeps_them():
    """A stand-in VAE whose decode is exactly the published projection: the check accepts them."""
    factors, bias = torch.tensor(WAN21_RGB), torch.tensor(WAN21_BIAS)

    class Config:
        z_dim = 16
        latents_mean = [0.0] * 16
        latents_std = [1.0] * 16

    class LinearVae:
        config = Config()

        def encode(self, x):
            g = torch.Generator().manual_seed(1)
            z = 0.5 * torch.randn(x.shape[0], 16, 1, x.shape[-2] // 8, x.shape[-1] // 8, generator=g)

            class Dist:
                latent_dist = type("D", (), {"mode": lambda self: z})()
            return Dist()

        def decode(self, z, return_dict=False):
            rgb = torch.einsum("bcfhw,cr->brfhw", z, factors) + bias.view(1, 3, 1, 1, 1)
            return (torch.nn.functional.interpolate(rgb[:, :, 0], scale_factor=8).unsqueeze(2),)

    projection = Projection.for_vae(LinearVae(), "cpu", torch.float32)
    assert projection.source == "wan21" and projection.r2 > 0.95


def test_a_preview_costs_little_next_to_a_step():
    """A 1024x1024 job's latents (64x64 tokens of 64 features) to a 256 px JPEG, on this CPU."""
    shown = []
    previewer = Previewer(Projection(WAN21_RGB, WAN21_BIAS, "wan21", 1.0), 1024, 1024, 8, "cpu",
                          lambda step, jpeg: shown.append(jpeg))
    latents = torch.randn(1, 64 * 64, 64)
    previewer.step(1, latents, 0.9)
    start = time.perf_counter()
    for step in range(2, 12):
        previewer.step(step, latents, 0.9 - step * 0.05)
    each = (time.perf_counter() - start) / 10
    print(f"preview of a 1024x1024 job's latents: {each * 1000:.1f} ms on this CPU")
    assert len(shown) == 11 and Image.open(io.BytesIO(shown[-1])).size == (128, 128)  # the latent grid
    assert each < 0.25  # generous here; the GPU figure is in BENCHMARKS.md
