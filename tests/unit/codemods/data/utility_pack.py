# Shape modeled on: cubiq/ComfyUI_essentials (image.py, mask.py, text.py, misc.py),
#   WASasquatch/was-node-suite-comfyui (WAS_Node_Suite.py: text, number and image utilities),
#   Kosinkadink/ComfyUI-VideoHelperSuite (load_images_nodes.py: IS_CHANGED hashing a folder),
#   comfyanonymous/ComfyUI (nodes.py: LoadImage.IS_CHANGED hashing the file).
# Written for qpatch's codemod corpus; no code is copied. Sixty small utility nodes: image ops,
# masks, strings, numbers, file I/O. No model and no weights are loaded anywhere, and nothing
# turns autograd on. Five classes have their own IS_CHANGED: ScreenGrab and RandomInt return
# NaN on every path on purpose (they must re-run every prompt), LoadImagesFromFolder returns an
# md5 of the folder listing and NaN only when the folder cannot be read, TextFileRead returns
# the file's mtime, LoadImageFromPath a sha256 of the file.
import hashlib
import json
import math
import os
import random
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageGrab, ImageOps

import folder_paths

IMG = ("IMAGE",)
MSK = ("MASK",)
STR = ("STRING", {"default": ""})
MSTR = ("STRING", {"multiline": True, "default": ""})
FLT = ("FLOAT", {"default": 1.0, "min": -1e6, "max": 1e6, "step": 0.01})
UNIT = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})
INT = ("INT", {"default": 0, "min": -(2**31), "max": 2**31 - 1})
SIZE = ("INT", {"default": 512, "min": 1, "max": 16384})
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF})


def pil2tensor(img):
    return torch.from_numpy(np.array(img).astype(np.float32) / 255.0)[None]


def tensor2pil(t):
    return Image.fromarray(np.clip(255.0 * t.cpu().numpy(), 0, 255).astype(np.uint8))


def blur(x, radius):
    # x: B,C,H,W; separable box blur applied three times (close to a gaussian)
    k = 2 * int(radius) + 1
    for _ in range(3):
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    return x


# ---------------------------------------------------------------- image ops (22)

class ImageInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image):
        return (1.0 - image,)


class ImageFlip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "direction": (["horizontal", "vertical"],)}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, direction):
        return (torch.flip(image, dims=[2] if direction == "horizontal" else [1]),)


class ImageRotate90:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "turns": ("INT", {"default": 1, "min": 0, "max": 3})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, turns):
        return (torch.rot90(image, k=turns, dims=(1, 2)),)


class ImageGrayscale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image):
        luma = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
        return (luma.unsqueeze(-1).repeat(1, 1, 1, 3),)


class ImageBrightnessContrast:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "brightness": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0}),
                             "contrast": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, brightness, contrast):
        return (((image - 0.5) * contrast + 0.5 + brightness).clamp(0, 1),)


class ImageGamma:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "gamma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 5.0})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, gamma):
        return (image.clamp(0, 1) ** (1.0 / gamma),)


class ImageCropBox:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "x": INT, "y": INT, "width": SIZE, "height": SIZE}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, x, y, width, height):
        _, h, w, _ = image.shape
        x, y = max(0, min(x, w - 1)), max(0, min(y, h - 1))
        return (image[:, y:y + height, x:x + width, :],)


class ImageResizeSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "width": SIZE, "height": SIZE,
                             "method": (["bilinear", "bicubic", "nearest", "area"],)}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, width, height, method):
        x = F.interpolate(image.movedim(-1, 1), size=(height, width), mode=method)
        return (x.movedim(1, -1).clamp(0, 1),)


class ImageScaleBy:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "factor": ("FLOAT", {"default": 2.0, "min": 0.01, "max": 8.0})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, factor):
        x = F.interpolate(image.movedim(-1, 1), scale_factor=factor, mode="bicubic")
        return (x.movedim(1, -1).clamp(0, 1),)


class ImagePadToMultiple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "multiple": ("INT", {"default": 64, "min": 1, "max": 512})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, multiple):
        _, h, w, _ = image.shape
        ph, pw = (-h) % multiple, (-w) % multiple
        x = F.pad(image.movedim(-1, 1), (0, pw, 0, ph), mode="replicate")
        return (x.movedim(1, -1),)


class ImageBlend:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image_a": IMG, "image_b": IMG, "alpha": UNIT}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image_a, image_b, alpha):
        if image_b.shape[1:3] != image_a.shape[1:3]:
            image_b = F.interpolate(image_b.movedim(-1, 1), size=image_a.shape[1:3]).movedim(1, -1)
        return (image_a * (1 - alpha) + image_b * alpha,)


class ImageGaussianBlur:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "radius": ("INT", {"default": 3, "min": 0, "max": 64})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, radius):
        if radius == 0:
            return (image,)
        return (blur(image.movedim(-1, 1), radius).movedim(1, -1),)


class ImageSharpen:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "radius": ("INT", {"default": 2, "min": 1, "max": 32}),
                             "amount": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 5.0})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, radius, amount):
        x = image.movedim(-1, 1)
        return ((x + amount * (x - blur(x, radius))).clamp(0, 1).movedim(1, -1),)


class ImageChannelSplit:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG}}
    RETURN_TYPES = ("MASK", "MASK", "MASK")
    RETURN_NAMES = ("red", "green", "blue")
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image):
        return (image[..., 0], image[..., 1], image[..., 2])


class ImageChannelMerge:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"red": MSK, "green": MSK, "blue": MSK}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, red, green, blue):
        return (torch.stack([red, green, blue], dim=-1),)


class ImageBatchConcat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images_a": IMG, "images_b": IMG}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, images_a, images_b):
        if images_b.shape[1:] != images_a.shape[1:]:
            images_b = F.interpolate(images_b.movedim(-1, 1), size=images_a.shape[1:3]).movedim(1, -1)
        return (torch.cat([images_a, images_b]),)


class ImageBatchPick:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": IMG, "index": ("INT", {"default": 0, "min": -4096, "max": 4096})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, images, index):
        return (images[index % images.shape[0]].unsqueeze(0),)


class ImageSolidColor:
    @classmethod
    def INPUT_TYPES(cls):
        c = ("INT", {"default": 0, "min": 0, "max": 255})
        return {"required": {"width": SIZE, "height": SIZE, "red": c, "green": c, "blue": c}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, width, height, red, green, blue):
        color = torch.tensor([red, green, blue], dtype=torch.float32) / 255.0
        return (color.view(1, 1, 1, 3).expand(1, height, width, 3).clone(),)


class ImageSize:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG}}
    RETURN_TYPES = ("INT", "INT", "INT")
    RETURN_NAMES = ("width", "height", "count")
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image):
        return (image.shape[2], image.shape[1], image.shape[0])


class ImagePosterize:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "levels": ("INT", {"default": 4, "min": 2, "max": 256})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, levels):
        return (torch.round(image * (levels - 1)) / (levels - 1),)


class ImageThreshold:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "threshold": UNIT}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, threshold):
        return ((image.mean(dim=-1, keepdim=True) > threshold).float().repeat(1, 1, 1, 3),)


class ImageToMaskChannel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "channel": (["red", "green", "blue", "alpha"],)}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/image"

    def run(self, image, channel):
        idx = ["red", "green", "blue", "alpha"].index(channel)
        if idx >= image.shape[-1]:
            return (torch.ones(image.shape[:3]),)
        return (image[..., idx],)


# ---------------------------------------------------------------- masks (14)

class MaskInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask):
        return (1.0 - mask,)


class MaskThresholdBinary:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK, "threshold": UNIT}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask, threshold):
        return ((mask > threshold).float(),)


class MaskGrow:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK, "pixels": ("INT", {"default": 4, "min": 0, "max": 256})}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask, pixels):
        k = 2 * pixels + 1
        return (F.max_pool2d(mask.unsqueeze(1), k, stride=1, padding=pixels).squeeze(1),)


class MaskShrink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK, "pixels": ("INT", {"default": 4, "min": 0, "max": 256})}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask, pixels):
        k = 2 * pixels + 1
        return (1.0 - F.max_pool2d(1.0 - mask.unsqueeze(1), k, stride=1, padding=pixels).squeeze(1),)


class MaskFeather:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK, "radius": ("INT", {"default": 8, "min": 0, "max": 256})}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask, radius):
        return (blur(mask.unsqueeze(1), radius).squeeze(1) if radius else mask,)


class MaskFromColor:
    @classmethod
    def INPUT_TYPES(cls):
        c = ("INT", {"default": 255, "min": 0, "max": 255})
        return {"required": {"image": IMG, "red": c, "green": c, "blue": c,
                             "tolerance": ("INT", {"default": 16, "min": 0, "max": 255})}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, image, red, green, blue, tolerance):
        target = torch.tensor([red, green, blue], dtype=image.dtype) / 255.0
        dist = (image[..., :3] - target).abs().max(dim=-1).values
        return ((dist <= tolerance / 255.0).float(),)


class MaskCombine:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask_a": MSK, "mask_b": MSK,
                             "operation": (["add", "subtract", "multiply", "max", "min"],)}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask_a, mask_b, operation):
        ops = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul,
               "max": torch.maximum, "min": torch.minimum}
        return (ops[operation](mask_a, mask_b).clamp(0, 1),)


class MaskBoundingBox:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK, "padding": ("INT", {"default": 0, "min": 0, "max": 4096})}}
    RETURN_TYPES = ("INT", "INT", "INT", "INT")
    RETURN_NAMES = ("x", "y", "width", "height")
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask, padding):
        ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
        if len(xs) == 0:
            return (0, 0, mask.shape[2], mask.shape[1])
        x0, y0 = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
        x1 = min(int(xs.max()) + padding + 1, mask.shape[2])
        y1 = min(int(ys.max()) + padding + 1, mask.shape[1])
        return (x0, y0, x1 - x0, y1 - y0)


class MaskToImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask):
        return (mask.unsqueeze(-1).repeat(1, 1, 1, 3),)


class MaskSolid:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": UNIT, "width": SIZE, "height": SIZE}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, value, width, height):
        return (torch.full((1, height, width), value),)


class MaskRectangle:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": SIZE, "height": SIZE, "x": INT, "y": INT, "box_w": SIZE, "box_h": SIZE}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, width, height, x, y, box_w, box_h):
        mask = torch.zeros((1, height, width))
        mask[:, max(y, 0):y + box_h, max(x, 0):x + box_w] = 1.0
        return (mask,)


class MaskCircle:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": SIZE, "height": SIZE, "cx": INT, "cy": INT, "radius": SIZE}}
    RETURN_TYPES = MSK
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, width, height, cx, cy, radius):
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return ((((xx - cx) ** 2 + (yy - cy) ** 2) <= radius ** 2).float().unsqueeze(0),)


class MaskApplyToImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMG, "mask": MSK}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, image, mask):
        if mask.shape[1:] != image.shape[1:3]:
            mask = F.interpolate(mask.unsqueeze(1), size=image.shape[1:3], mode="bilinear").squeeze(1)
        return (image * mask.unsqueeze(-1),)


class MaskArea:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mask": MSK}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "utils/mask"

    def run(self, mask):
        return (float(mask.mean()),)


# ---------------------------------------------------------------- strings (14)

class StringConcat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": STR, "b": STR, "separator": ("STRING", {"default": " "})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, a, b, separator):
        return (separator.join(s for s in (a, b) if s),)


class StringReplace:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "find": STR, "replace": STR}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, find, replace):
        return (text.replace(find, replace) if find else text,)


class StringRegexReplace:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "pattern": STR, "replace": STR}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, pattern, replace):
        try:
            return (re.sub(pattern, replace, text),)
        except re.error:
            return (text,)


class StringSplitPick:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "delimiter": ("STRING", {"default": ","}), "index": INT}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, delimiter, index):
        parts = text.split(delimiter) if delimiter else list(text)
        return (parts[index % len(parts)].strip() if parts else "",)


class StringStrip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text):
        return (" ".join(text.split()),)


class StringCase:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "case": (["lower", "upper", "title", "capitalize"],)}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, case):
        return (getattr(text, case)(),)


class StringLength:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text):
        return (len(text),)


class StringContains:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "needle": STR, "case_sensitive": ("BOOLEAN", {"default": False})}}
    RETURN_TYPES = ("BOOLEAN",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, needle, case_sensitive):
        if not case_sensitive:
            text, needle = text.lower(), needle.lower()
        return (needle in text,)


class StringJoinLines:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": MSTR, "joiner": ("STRING", {"default": ", "})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, joiner):
        return (joiner.join(line.strip() for line in text.splitlines() if line.strip()),)


class StringFormatTemplate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"template": ("STRING", {"multiline": True, "default": "{a} {b}"}),
                             "a": STR, "b": STR, "c": STR}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, template, a, b, c):
        try:
            return (template.format(a=a, b=b, c=c),)
        except (KeyError, IndexError, ValueError):
            return (template,)


class StringToInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": STR, "fallback": INT}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, fallback):
        try:
            return (int(float(text.strip())),)
        except ValueError:
            return (fallback,)


class StringToFloat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": STR, "fallback": FLT}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, fallback):
        try:
            return (float(text.strip()),)
        except ValueError:
            return (fallback,)


class PromptWildcard:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": "a {red|blue} car"}), "seed": SEED}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    def run(self, text, seed):
        rng = random.Random(seed)
        return (re.sub(r"\{([^{}]*)\}", lambda m: rng.choice(m.group(1).split("|")), text),)


class TextFileRead:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": STR, "encoding": (["utf-8", "utf-8-sig", "latin-1"],)}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/string"

    @classmethod
    def IS_CHANGED(cls, path, encoding):
        try:
            return os.path.getmtime(path)
        except OSError:
            return ""

    def run(self, path, encoding):
        with open(path, encoding=encoding) as f:
            return (f.read(),)


# ---------------------------------------------------------------- numbers and files (10)

class IntMath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": INT, "b": INT, "op": (["+", "-", "*", "//", "%", "max", "min"],)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "utils/number"

    def run(self, a, b, op):
        if op in ("//", "%") and b == 0:
            return (0,)
        fns = {"+": a + b, "-": a - b, "*": a * b, "max": max(a, b), "min": min(a, b)}
        return (fns[op] if op in fns else (a // b if op == "//" else a % b),)


class FloatMath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": FLT, "b": FLT, "op": (["+", "-", "*", "/", "pow", "atan2"],)}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"
    CATEGORY = "utils/number"

    def run(self, a, b, op):
        if op == "/":
            return (a / b if b else 0.0,)
        if op == "pow":
            return (math.pow(a, b),)
        if op == "atan2":
            return (math.atan2(a, b),)
        return ({"+": a + b, "-": a - b, "*": a * b}[op],)


class IntToString:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": INT, "zero_pad": ("INT", {"default": 0, "min": 0, "max": 16})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "utils/number"

    def run(self, value, zero_pad):
        return (str(value).zfill(zero_pad),)


class SeedGenerator:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": SEED}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "utils/number"

    def run(self, seed):
        return (seed,)


class RandomInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"minimum": INT, "maximum": ("INT", {"default": 100, "min": -(2**31), "max": 2**31 - 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "utils/number"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # a fresh number every prompt, on purpose

    def run(self, minimum, maximum):
        return (random.randint(min(minimum, maximum), max(minimum, maximum)),)


class ScreenGrab:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"all_screens": ("BOOLEAN", {"default": False})},
                "optional": {"region": ("STRING", {"default": ""})}}
    RETURN_TYPES = IMG
    FUNCTION = "run"
    CATEGORY = "utils/io"

    @classmethod
    def IS_CHANGED(cls, all_screens, region=""):
        return float("NaN")  # the screen is never the same twice

    def run(self, all_screens, region=""):
        bbox = tuple(int(v) for v in region.split(",")) if region.count(",") == 3 else None
        return (pil2tensor(ImageGrab.grab(bbox=bbox, all_screens=all_screens).convert("RGB")),)


class LoadImagesFromFolder:
    EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": STR, "limit": ("INT", {"default": 0, "min": 0, "max": 10000})}}
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("images", "count")
    FUNCTION = "run"
    CATEGORY = "utils/io"

    @classmethod
    def IS_CHANGED(cls, folder, limit):
        digest = hashlib.md5()
        try:
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(cls.EXTENSIONS):
                    st = os.stat(os.path.join(folder, name))
                    digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            return float("nan")  # unreadable folder: let run() raise the real error
        digest.update(str(limit).encode())
        return digest.hexdigest()

    def run(self, folder, limit):
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(self.EXTENSIONS))
        names = names[:limit] if limit else names
        if not names:
            raise FileNotFoundError(f"no images in {folder}")
        first = Image.open(os.path.join(folder, names[0])).convert("RGB")
        frames = [pil2tensor(first)]
        for name in names[1:]:
            img = ImageOps.exif_transpose(Image.open(os.path.join(folder, name))).convert("RGB")
            frames.append(pil2tensor(img.resize(first.size)))
        return (torch.cat(frames), len(frames))


class LoadImageFromPath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": STR}}
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "run"
    CATEGORY = "utils/io"

    @classmethod
    def IS_CHANGED(cls, path):
        m = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                m.update(chunk)
        return m.hexdigest()

    def run(self, path):
        img = ImageOps.exif_transpose(Image.open(path))
        rgb = pil2tensor(img.convert("RGB"))
        if "A" in img.getbands():
            mask = 1.0 - torch.from_numpy(np.array(img.getchannel("A")).astype(np.float32) / 255.0)
        else:
            mask = torch.zeros(rgb.shape[1:3])
        return (rgb, mask.unsqueeze(0))


class SaveImageSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": IMG, "prefix": ("STRING", {"default": "utils"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "utils/io"

    def run(self, images, prefix):
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1])
        results = []
        for i, image in enumerate(images):
            file = f"{name}_{counter + i:05}_.png"
            tensor2pil(image).save(os.path.join(folder, file), compress_level=4)
            results.append({"filename": file, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": results}}


class ShowText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}
    RETURN_TYPES = ("STRING",)
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "utils/io"

    def run(self, text):
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {
    name: obj for name, obj in list(globals().items())
    if isinstance(obj, type) and hasattr(obj, "FUNCTION") and hasattr(obj, "INPUT_TYPES")
}
NODE_DISPLAY_NAME_MAPPINGS = {name: re.sub(r"(?<!^)(?=[A-Z])", " ", name) for name in NODE_CLASS_MAPPINGS}
print(f"[utility_pack] {len(NODE_CLASS_MAPPINGS)} nodes: " + json.dumps(sorted(NODE_CLASS_MAPPINGS))[:80])
