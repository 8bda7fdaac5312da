"""What each GGUF type the project can write keeps of a weight: bits per weight and relative error.

    python3 bench/gguf_types.py [--rows 3072] [--cols 3072]

A Gaussian matrix the size of one of Qwen-Image's attention projections (3072 x 3072; trained
weights are close to Gaussian per row) is quantized with the ``gguf`` package (as the tiny model's
builder writes files) and dequantized with diffusers' own GGUF kernels (as the worker runs them):
the relative Frobenius error ||W - W'|| / ||W|| and the bytes per weight of each type, beside bf16.
A weight-level figure, not an image metric: see docs/profiles.md for what is published on pictures.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=3072)
    args = ap.parse_args()
    import numpy as np
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from serve_app.worker.gguf_files import WRITABLE

    weight = np.random.default_rng(0).normal(0, 0.02, (args.rows, args.cols)).astype(np.float32)
    norm = np.linalg.norm(weight)
    bf16 = torch.from_numpy(weight).to(torch.bfloat16).float().numpy()
    rows = {"bf16 (reference)": {"bits_per_weight": 16.0,
                                 "relative_error": round(float(np.linalg.norm(weight - bf16) / norm), 5)}}
    for name in WRITABLE:
        kind = GGMLQuantizationType[name]
        packed = quantize(weight, kind)
        restored = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(packed), quant_type=kind)).float().numpy()
        rows[name] = {"bits_per_weight": round(packed.nbytes * 8 / weight.size, 3),
                      "relative_error": round(float(np.linalg.norm(weight - restored) / norm), 5)}
    print(json.dumps({"matrix": [args.rows, args.cols], "types": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
