"""Live previews: the picture as it forms, from the latents after each denoising step, without the
VAE (a decode per step would cost a large share of a step).

A preview is a linear projection of the 16 latent channels to RGB, the way ComfyUI previews
latents of the Wan 2.1 VAE family, which the Qwen-Image VAE belongs to. The pipeline's latents
are normalised ((z - latents_mean) / latents_std, per channel) and packed 2x2 into 64 features per
token; the projection works on them as they are.

Which factors: ComfyUI's published Wan 2.1 factors (``WAN21_RGB``, ``WAN21_BIAS``) are checked
against this VAE the first time a job asks for previews (``Projection.for_vae``): a few smooth
random colour fields are encoded, and the projection of their latents is compared with the VAE's
own decode of the same latents (R^2 over all pixels and channels, at latent resolution). If they fit
(R^2 >= ``FIT_R2``) they are used; otherwise (another VAE, or the tiny test model's random one)
factors are fitted to this VAE by least squares on the same data, and the log says so. Either
way the preview is what this VAE would show, approximately.

Not the noisy latent but the current estimate of the final one is shown: for flow-matching Euler
steps, x0 ~ x_next - sigma_next * (x_next - x_prev) / (sigma_next - sigma_prev), which needs the
previous step's latents and the scheduler's sigmas (the first step shows the noisy latent).

Guarantees: at most ``MAX_SIDE`` pixels on the long side, JPEG; nothing is computed for a job that
did not ask; on a GPU the projection and a small copy run on the device without waiting for it
(the JPEG is made from a step's copy once the device has finished it, so no step waits).
"""

import io
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_SIDE = 256
JPEG_QUALITY = 80
FIT_R2 = 0.6  # below this, the published factors do not describe this VAE

# ComfyUI's latent -> RGB factors for the Wan 2.1 VAE (comfy/latent_formats.py, class Wan21): rows
# are latent channels, columns R, G, B; the result is in [-1, 1].
WAN21_RGB = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_BIAS = (-0.1835, -0.0868, -0.3360)


@dataclass(frozen=True)
class Projection:
    factors: tuple  # (16, 3)
    bias: tuple  # (3,)
    source: str  # "wan21" or "fitted"
    r2: float  # how well it matched the VAE's decode on the calibration fields

    @staticmethod
    def calibration(vae, device, dtype, n: int = 6, side: int = 128, seed: int = 0):
        """(normalised latents (N, 16, h, w), the VAE's decode of them at latent size (N, 3, h, w)),
        from ``n`` smooth random colour fields of ``side`` pixels."""
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
        fields = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=device, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=device, dtype=torch.float32).view(1, z_dim, 1, 1, 1)
        with torch.inference_mode():
            x = fields.to(device=device, dtype=dtype).unsqueeze(2)  # (N, 3, frames=1, H, W)
            z = vae.encode(x).latent_dist.mode().float()
            decoded = vae.decode(z.to(dtype), return_dict=False)[0][:, :, 0].float()
            normalised = ((z - mean) / std)[:, :, 0]
            target = F.interpolate(decoded, size=normalised.shape[-2:], mode="area")
        return normalised.cpu(), target.clamp(-1, 1).cpu()

    @classmethod
    def for_vae(cls, vae, device, dtype) -> "Projection":
        """The published factors if they fit this VAE, else factors fitted to it (see the module)."""
        import torch

        latents, target = cls.calibration(vae, device, dtype)
        z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (pixels, 16)
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)
        published = z @ torch.tensor(WAN21_RGB) + torch.tensor(WAN21_BIAS)
        r2 = _r2(published, y)
        if r2 >= FIT_R2:
            return cls(WAN21_RGB, WAN21_BIAS, "wan21", r2)
        design = torch.cat([z, torch.ones(z.shape[0], 1)], 1)  # the 16 channels and a constant for the bias
        solution = torch.linalg.lstsq(design, y).solution  # (17, 3)
        fitted = cls(tuple(map(tuple, solution[:-1].tolist())), tuple(solution[-1].tolist()), "fitted",
                     _r2(design @ solution, y))
        log.info("previews: the Wan 2.1 factors do not fit this VAE (R^2 %.2f); fitted its own (R^2 %.2f)",
                 r2, fitted.r2)
        return fitted


def _r2(predicted, target) -> float:
    residual = ((predicted - target) ** 2).sum()
    total = ((target - target.mean(0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else 0.0


class Previewer:
    """Turns one job's latents, step after step, into JPEG previews. Made per job; used from the
    inference thread (``step``) and finished with ``flush``."""

    def __init__(self, projection: Projection, height: int, width: int, vae_scale_factor: int, device, emit):
        import torch

        self.h, self.w = 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2))
        self.factors = torch.tensor(projection.factors, device=device, dtype=torch.float32)
        self.bias = torch.tensor(projection.bias, device=device, dtype=torch.float32)
        self.emit = emit  # called with (step, jpeg bytes)
        self.cuda = torch.device(device).type == "cuda"
        self.previous = None  # (latents, sigma) after the previous step
        self.pending = None  # (step, event, pinned host copy): a preview the device may still be making
        self.host = None
        scale = min(1.0, MAX_SIDE / max(self.h, self.w))
        self.size = (max(1, round(self.w * scale)), max(1, round(self.h * scale)))

    def step(self, step: int, latents, sigma: float | None) -> None:
        """After denoising step ``step`` (1-based), with the scheduler's sigma for ``latents``."""
        import torch

        if self.pending is not None and self.pending[1].query():
            self._emit(*self.pending)
            self.pending = None
        x = latents.float()
        estimate = x
        if self.previous is not None and sigma is not None and self.previous[1] is not None:
            before, sigma_before = self.previous
            if sigma != sigma_before:
                estimate = x - sigma * (x - before) / (sigma - sigma_before)
        self.previous = (x.clone(), sigma)
        rgb = self._project(estimate)  # (h, w, 3) uint8, on the device
        if not self.cuda:
            self._emit(step, None, rgb)
            return
        if self.host is None:  # two pinned buffers, reused: a copy in flight never shares one with the next
            self.host = [torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        host = self.host[step % 2]
        host.copy_(rgb, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (step, event, host)  # one the device has not finished yet is replaced: newer wins

    def flush(self) -> None:
        """The last preview, if one is still on its way (waits for the device)."""
        if self.pending is not None:
            self.pending[1].synchronize()
            self._emit(*self.pending)
            self.pending = None

    def _project(self, packed):
        import torch
        import torch.nn.functional as F

        b, tokens, features = packed.shape
        x = packed[:1].view(1, self.h // 2, self.w // 2, features // 4, 2, 2)
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(1, features // 4, self.h, self.w)
        rgb = torch.einsum("bchw,cr->brhw", x, self.factors) + self.bias.view(1, 3, 1, 1)
        if (self.size[1], self.size[0]) != (self.h, self.w):
            rgb = F.interpolate(rgb, size=(self.size[1], self.size[0]), mode="bilinear", align_corners=False)
        return ((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()

    def _emit(self, step: int, event, rgb) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb.cpu().numpy()).save(buf, "JPEG", quality=JPEG_QUALITY)
        self.emit(step, buf.getvalue())
