"""Scheduler settings shared by the presets and the GPU benchmark (no heavy or third-party imports).

The Lightning LoRAs were distilled with these FlowMatchEulerDiscreteScheduler settings (from the
LoRA authors' model card); any others give blurry or wrong images with no error.
"""

import math

LIGHTNING_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": math.log(3), "max_shift": math.log(3),
    "max_image_seq_len": 8192, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": None,
    "use_dynamic_shifting": True, "time_shift_type": "exponential",
    "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
