"""Named fake engines for fault tests: the real EditEngine on the tiny model, with one failure mode
each, chosen by a job's instruction (``worker.engine: tests.fakes:<Name>`` in a test app's config)."""

import threading

from serve_app.pipeline import EditEngine

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
