"""Time both codemods on a generated node pack; prints seconds (target: <= 1 s).

A benchmark, not a test (docs/design.md: performance is measured by scripts, never by timed
tests). Three shapes of file (`--shape`):

- `loader` (the default, 10,000 lines): a node pack's main module: one Qwen-Image loader node
  shaped like the test bed's, a few other nodes, and thousands of lines of helpers and plain
  classes, some of which mention `model` (so they reach libcst too).
- `utility` (5,000 lines): an image-utility pack where nearly every class is a node, none
  loads a model, a few have their own IS_CHANGED, and all share a base class: both codemods
  find nothing to patch (NothingToPatch, timed like a result), and should say so fast.
- `worst` (10,000 lines; also `--worst`): every class a loader: then libcst must read it
  all, and the time is libcst's parse and passes (several seconds per 10,000 lines on a
  small machine).

    python scripts/bench_codemods.py [--shape loader|utility|worst] [--lines N] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from libcst.codemod import CodemodContext

from qpatch.codemods import CODEMODS, NothingToPatch, run_codemod
from qpatch.codemods.segments import plan

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

    @torch.inference_mode(False)  # autograd back on inside ComfyUI, as such nodes do
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


UTILITY_HEADER = '''\
"""Generated image-utility pack for qpatch's codemod benchmark: no model anywhere."""

import hashlib
import os
import random

import numpy as np
import torch
from PIL import Image, ImageGrab


class UtilityNode:
    """What every node of the pack shares."""

    CATEGORY = "utils"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
'''

IMAGE_NODE = '''

class ImageAdjust{i}(UtilityNode):
    """Brightness, contrast and a blur of radius {i}: an image op that loads nothing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {{
            "required": {{
                "image": ("IMAGE",),
                "brightness": ("FLOAT", {{"default": 0.0, "min": -1.0, "max": 1.0}}),
                "contrast": ("FLOAT", {{"default": 1.0, "min": 0.0, "max": 4.0}}),
            }}
        }}

    def run(self, image, brightness, contrast):
        out = (image - 0.5) * contrast + 0.5 + brightness
        kernel = torch.ones(1, 1, {i} % 5 + 1, {i} % 5 + 1) / ({i} % 5 + 1) ** 2
        channels = out.movedim(-1, 1)
        b, c, h, w = channels.shape
        blurred = torch.nn.functional.conv2d(
            channels.reshape(b * c, 1, h, w), kernel, padding="same"
        )
        return (blurred.reshape(b, c, h, w).movedim(1, -1).clamp(0.0, 1.0),)
'''

# A few nodes with their own IS_CHANGED, as real packs have: one re-runs on purpose (NaN),
# one hashes a folder (NaN only when it cannot be read), one returns a file's mtime.
OWN_IS_CHANGED = (
    '''

class ScreenGrab{i}(UtilityNode):
    """Grabs the screen on every prompt: NaN on purpose."""

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"monitor": ("INT", {{"default": 0}})}}}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def run(self, monitor):
        grab = np.asarray(ImageGrab.grab(all_screens=monitor > 0)).astype(np.float32) / 255.0
        return (torch.from_numpy(grab)[None],)
''',
    '''

class LoadFolder{i}(UtilityNode):
    """Every image of a folder, re-read when the listing changes."""

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"folder": ("STRING", {{"default": "input"}})}}}}

    @classmethod
    def IS_CHANGED(cls, folder):
        try:
            return hashlib.md5("\\n".join(sorted(os.listdir(folder))).encode()).hexdigest()
        except OSError:
            return float("nan")

    def run(self, folder):
        paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths]
        return (torch.from_numpy(np.stack(images)),)
''',
    '''

class RandomNoise{i}(UtilityNode):
    """Fresh noise unless seeded."""

    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"seed": ("INT", {{"default": -1}})}}}}

    @classmethod
    def IS_CHANGED(cls, seed):
        return seed if seed >= 0 else random.random()

    def run(self, seed):
        generator = torch.Generator().manual_seed(seed if seed >= 0 else random.randrange(2**31))
        return (torch.rand(1, 64, 64, 3, generator=generator),)
''',
)

UTILITY_HELPER = '''

def tensor_to_pil_{i}(image):
    """Helper {i}: the first image of a batch as a PIL image."""
    array = np.clip(255.0 * image[0].cpu().numpy(), 0, 255).astype(np.uint8)
    return Image.fromarray(array)
'''

UTILITY_FOOTER = """

NODE_CLASS_MAPPINGS = {{{mappings}}}
NODE_DISPLAY_NAME_MAPPINGS = {{name: name.replace("_", " ") for name in NODE_CLASS_MAPPINGS}}
"""


def utility_file(lines: int) -> bytes:
    """Image-op nodes (one in ten with its own IS_CHANGED) and a helper after every few, up
    to `lines` lines, all registered in NODE_CLASS_MAPPINGS."""
    parts, nodes = [UTILITY_HEADER], []
    i = 0
    while sum(part.count("\n") for part in parts) < lines - 2:
        own = i % 10 == 9
        template = OWN_IS_CHANGED[(i // 10) % len(OWN_IS_CHANGED)] if own else IMAGE_NODE
        parts.append(template.format(i=i))
        nodes.append(template.split("class ", 1)[1].split("(", 1)[0].format(i=i))
        if i % 4 == 3:
            parts.append(UTILITY_HELPER.format(i=i))
        i += 1
    parts.append(UTILITY_FOOTER.format(mappings=", ".join(f'"{n}": {n}' for n in nodes)))
    return "".join(parts).encode()


SHAPES = {
    "loader": (loader_file, 10_000, "one loader node"),
    "utility": (utility_file, 5_000, "image utilities, no model"),
    "worst": (worst_file, 10_000, "every class a loader"),
}


def time_codemod(name: str, source: bytes, repeat: int) -> tuple[float, str]:
    """The median time of `repeat` runs, and how the run ended."""
    times, outcome = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            _, report = run_codemod(name, source, path="bench_pack.py")
            outcome = f"{len(report.changes)} changes"
        except NothingToPatch:
            outcome = "nothing to patch"
        times.append(time.perf_counter() - started)
    return statistics.median(times), outcome


def libcst_share(name: str, source: bytes) -> str:
    """How many of the file's lines segments.py hands to libcst."""
    transform = CODEMODS[name](CodemodContext())
    text = source.decode()
    part = plan(text, transform.file_seeds(text), transform.linked_words)
    return f"libcst reads {part.text.count(chr(10))} of {text.count(chr(10))} lines"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="loader")
    parser.add_argument("--lines", type=int, help="default: 10,000 (utility: 5,000)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worst", action="store_true", help="the same as --shape worst")
    args = parser.parse_args()
    make, lines, kind = SHAPES["worst" if args.worst else args.shape]
    source = make(args.lines or lines)
    classes = source.count(b"\nclass ")
    print(
        f"{len(source.splitlines())}-line generated file ({kind}, {classes} classes), "
        f"{len(source)} bytes"
    )
    for name in CODEMODS:
        seconds, outcome = time_codemod(name, source, args.repeat)
        print(
            f"{name}: {seconds:.3f} s (median of {args.repeat}; {outcome}; "
            f"{libcst_share(name, source)})"
        )


if __name__ == "__main__":
    main()
