"""The LoRA a held pipeline has now, swapped without reloading the base.

A LoRA file is read once (then kept in CPU memory) and its layer names and shapes are checked against
the transformer: a LoRA for another model is an error (``LoraMismatch``), never silently half-applied.
By the profile's ``lora_mode``:
- ``fuse`` (bf16 weights): fused into the weights, with the PEFT wrappers removed so inference costs
  exactly the base's. Before the first fuse, the original weights of every layer a LoRA touches are
  copied aside (to pinned CPU memory on a GPU); switching away copies them back, so a round trip
  gives pixel-identical outputs (fuse then unfuse is not exact in bf16).
- ``adapter`` (quantized weights): the LoRA stays an unfused PEFT adapter beside the quantized layers,
  which are never written to: switching away removes the adapter, so the round trip is exact by
  construction.
"""

import re
from pathlib import Path

from ..presets import WeightFile


class LoraMismatch(ValueError):
    """A LoRA whose layers do not match the base model's transformer."""


def lora_targets(state_dict: dict) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Layer name -> (lora_A shape, lora_B shape) for a LoRA state dict in diffusers' naming."""
    targets: dict[str, list] = {}
    for key, tensor in state_dict.items():
        m = re.match(r"^(?:transformer\.)?(.+)\.lora_([AB])\.weight$", key)
        if m:
            targets.setdefault(m.group(1), [None, None])["AB".index(m.group(2))] = tuple(tensor.shape)
    return {name: (a, b) for name, (a, b) in targets.items()}


class LoraSlot:
    """One held pipeline's LoRA (``applied``; None: the bare base). Made anew with each base the
    engine holds, so its cache of checked LoRA files is always checked against that base."""

    def __init__(self, pipe, mode: str, device: str):
        self.pipe, self.mode, self.device = pipe, mode, device
        self.applied: WeightFile | None = None
        self._originals: dict = {}  # layer name -> its base weight, for an exact restore
        self._cache: dict[WeightFile, dict] = {}

    def _state(self, lora: WeightFile) -> dict:
        if lora not in self._cache:
            if lora.path:
                sd = self.pipe.lora_state_dict(str(Path(lora.path).expanduser()))
            else:
                sd = self.pipe.lora_state_dict(lora.repo, weight_name=lora.file, local_files_only=True)
            self._check(sd, lora)
            self._cache[lora] = {k: v.to("cpu") for k, v in sd.items()}
        return self._cache[lora]

    def _check(self, state_dict: dict, lora: WeightFile) -> None:
        import torch

        targets = lora_targets(state_dict)
        modules = dict(self.pipe.transformer.named_modules())
        if not targets:
            raise LoraMismatch(f"LoRA {lora.describe()} holds no LoRA layers")
        absent = sorted(n for n in targets if not isinstance(modules.get(n), torch.nn.Linear))
        if absent:
            raise LoraMismatch(
                f"LoRA {Path(lora.describe()).name} does not fit this model: {len(absent)} of its "
                f"{len(targets)} layers (e.g. {absent[0]}) are not linear layers of the transformer")
        for name, (a, b) in targets.items():
            # The layer's sizes, not its weight's shape: a 4-bit weight is stored packed.
            layer = modules[name]
            shape = (layer.out_features, layer.in_features)
            if a is None or b is None or a[1] != shape[1] or b[0] != shape[0]:
                raise LoraMismatch(f"LoRA {Path(lora.describe()).name} does not fit this model: layer "
                                   f"{name} has shapes {a} / {b}, the model's weight is {shape}")

    def restore(self) -> None:
        """Back to the bare base: an adapter removed, or fused weights copied back from the originals."""
        import torch

        if self.applied is None:
            return
        if self.mode == "adapter":
            self.pipe.unload_lora_weights()  # the PEFT layers go; the quantized weights were never touched
            self.applied = None
            return
        modules = dict(self.pipe.transformer.named_modules())
        with torch.no_grad():
            for name, original in self._originals.items():
                modules[name].weight.copy_(original, non_blocking=True)
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.applied = None

    def apply(self, lora: WeightFile | None) -> None:
        """Hold ``lora`` (None: the bare base); the one before it is removed first, exactly."""
        if self.applied == lora:
            return
        self.restore()
        if lora is None:
            return
        state = self._state(lora)  # read and checked against the bare base
        if self.mode == "adapter":
            self.pipe.load_lora_weights(dict(state), adapter_name="active")
        else:
            self._fuse(state)
        self.applied = lora

    def _fuse(self, state: dict) -> None:
        import torch

        modules = dict(self.pipe.transformer.named_modules())
        with torch.no_grad():
            for name in lora_targets(state):
                if name not in self._originals:  # weights are the base's here: keep a copy once
                    weight = modules[name].weight.detach()
                    # Pinned host memory on a GPU (one copy, no staging): the restore is a fast
                    # host-to-device copy, and the GPU keeps its memory for the model.
                    copy = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=self.device == "cuda")
                    self._originals[name] = copy.copy_(weight)
        self.pipe.load_lora_weights(dict(state), adapter_name="active")
        self.pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=["active"])
        self.pipe.unload_lora_weights()  # drop the PEFT wrappers; the fused weights stay
