"""Named fake engines (``worker.engine: tests.fakes:<Name>`` in a test app's config): for fault tests,
the real EditEngine on the tiny model with one failure mode each, chosen by a job's instruction; for
tests of the serving path's own load, an engine with no model at all."""

import threading

from PIL import Image

from serve_app.worker.engine import EditEngine

FOREVER = threading.Event()  # never set: waiting on it is a hang, as in a stuck CUDA call


class HangsOnceEngine(EditEngine):
    """A job whose instruction starts with ``hang`` hangs inside the pipeline the first time it runs on
    this machine (a marker file beside the models records it); run again, it completes."""

    def generate(self, preset, images_bytes, instruction, seed, system_prompt=None, on_step=None, prepared=None):
        if instruction.startswith("hang"):
            marker = self.models_dir / f"hung-{instruction}"
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                FOREVER.wait()
        return super().generate(preset, images_bytes, instruction, seed, system_prompt, on_step, prepared)


class SilentEngine(EditEngine):
    """A job whose instruction starts with ``silent`` generates, then its PNG encoding never returns:
    the worker lives on and never reports the outcome (a report lost), every time it runs."""

    def generate(self, preset, images_bytes, instruction, seed, system_prompt=None, on_step=None, prepared=None):
        image = super().generate(preset, images_bytes, instruction, seed, system_prompt, on_step, prepared)
        image.info["silent"] = instruction.startswith("silent")
        return image

    def encode(self, image) -> bytes:
        if image.info.get("silent"):
            FOREVER.wait()
        return super().encode(image)


class InstantEngine(EditEngine):
    """No model: a job's result is a small image of its seed's colour, made at once, with its one step
    reported. Every call between ingress, queue and worker is the real one (the decoded upload fetched,
    progress, the PNG stored); only the model's work is left out, for tests that count what the
    serving path itself keeps (a thousand jobs)."""

    def ensure(self, preset) -> float:
        self.preset = preset
        return 0.0

    def generate(self, preset, images_bytes, instruction, seed, system_prompt=None, on_step=None, prepared=None,
                 **_):
        self.ensure(preset)
        if on_step is not None:
            on_step(1, 1)
        return Image.new("RGB", (64, 64), (seed % 256, 90, 200))


class PictureEngine(InstantEngine):
    """No model: the result is a real photo, for tests of the output check with a real detector.
    A job whose instruction names the astronaut gets scikit-image's astronaut (a public-domain NASA
    portrait, in which NudeNet finds a face); any other job gets its first input back unchanged."""

    def generate(self, preset, images_bytes, instruction, seed, system_prompt=None, on_step=None, prepared=None,
                 **_):
        from serve_app import images

        self.ensure(preset)
        if on_step is not None:
            on_step(1, 1)
        if "astronaut" in instruction:
            from skimage import data

            return Image.fromarray(data.astronaut())
        uploads = prepared.images if prepared is not None else [images.to_rgb(u) for u in images_bytes]
        return uploads[0]
