"""Time both codemods on a generated 10,000-line loader; prints seconds (target: <= 1 s).

A benchmark, not a test (docs/design.md: performance is measured by scripts, never by timed
tests). The file is a node pack's main module: one Qwen-Image loader node shaped like the
test bed's, a few other nodes, and thousands of lines of helpers and plain classes, some of
which mention `model` (so they reach libcst too). `--worst` times a file where every class
is a loader instead: then libcst must read it all, and the time is libcst's parse and
passes (several seconds per 10,000 lines on a small machine).

    python scripts/bench_codemods.py [--lines 10000] [--repeat 5] [--worst]
"""

from __future__ import annotations

import argparse
import statistics
import time

from qpatch.codemods import CODEMODS, run_codemod

HEADER = '''\
"""Generated node pack for qpatch's codemod benchmark."""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

try:
    import folder_paths
except ImportError:  # outside ComfyUI
    folder_paths = None
'''

LOADER = '''

class QwenImageLoader{i}:
    """Loads the DiT with from_pretrained and runs it once per step."""

    CATEGORY = "loaders/qwen_image"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"model_name": ("STRING", {{"default": "qwen-image"}})}}}}

    def load(self, model_path, dtype=torch.float16):
        self.model = QwenImageModel.from_pretrained(
            os.path.join(model_path, "transformer"),  # the DiT only
            torch_dtype=dtype,
        )
        self.model.eval()

    def run(self, model_name, steps=4, *args, **kwargs):
        self.load(model_name)
        x = torch.zeros(1, 16, 64)
        for i in range(steps):
            t = torch.full((1,), 1.0 - i / steps)
            out = self.model(x, t, *args, **kwargs)
            x = x - out / steps
        return (self.model.forward(x, timestep=t)[0],)
'''

NODE = '''

class ImageOp{i}:
    """A node that loads nothing."""

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"image": ("IMAGE",), "amount": ("FLOAT", {{"default": 0.5}})}}}}

    def apply(self, image, amount):
        return (torch.clamp(image * (1.0 + amount * {i}), 0.0, 1.0),)
'''

HELPER = '''

def helper_{i}(x, scale={i}.0, eps=1e-6):
    """Helper {i}: normalise, scale and clamp a tensor."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps)
    if scale != 1.0:
        y = y * scale
    for _ in range(2):
        y = torch.where(y > 3.0, torch.full_like(y, 3.0), y)
        y = torch.where(y < -3.0, torch.full_like(y, -3.0), y)
    return y
'''

MODEL_HELPER = '''

def count_parameters_{i}(model):
    """Helper {i}: parameters of a model (it mentions `model`, so libcst reads it)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
'''

PLAIN_CLASS = '''

class Schedule{i}:
    """A plain class: a cosine noise schedule."""

    def __init__(self, steps={i}):
        self.steps = max(1, steps)

    def sigma(self, t):
        return math.cos(0.5 * math.pi * t / self.steps) ** 2

    def sigmas(self):
        return [self.sigma(t) for t in range(self.steps + 1)]

    def to_json(self):
        return json.dumps({{"steps": self.steps, "sigmas": self.sigmas()}})
'''

FOOTER = """

NODE_CLASS_MAPPINGS = {{{mappings}}}
"""


def loader_file(lines: int) -> bytes:
    """One loader, five other nodes, helpers and plain classes up to `lines` lines."""
    parts = [HEADER, LOADER.format(i=0)]
    nodes = ["QwenImageLoader0"] + [f"ImageOp{i}" for i in range(5)]
    parts += [NODE.format(i=i) for i in range(5)]
    fillers = [HELPER, HELPER, PLAIN_CLASS, HELPER, MODEL_HELPER]
    i = 0
    while sum(part.count("\n") for part in parts) < lines - 2:
        parts.append(fillers[i % len(fillers)].format(i=i))
        i += 1
    parts.append(FOOTER.format(mappings=", ".join(f'"{n}": {n}' for n in nodes)))
    return "".join(parts).encode()


def worst_file(lines: int) -> bytes:
    """Every class a loader node: nothing for the segment selection to leave out."""
    parts = [HEADER]
    i = 0
    while sum(part.count("\n") for part in parts) < lines:
        parts.append(LOADER.format(i=i))
        i += 1
    return "".join(parts).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worst", action="store_true", help="every class a loader")
    args = parser.parse_args()
    source = (worst_file if args.worst else loader_file)(args.lines)
    kind = "every class a loader" if args.worst else "one loader node"
    print(f"{len(source.splitlines())}-line generated file ({kind}), {len(source)} bytes")
    for name in CODEMODS:
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            run_codemod(name, source, path="bench_loader.py")
            times.append(time.perf_counter() - started)
        print(f"{name}: {statistics.median(times):.3f} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
