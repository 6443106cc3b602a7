# Shape modeled on: city96/ComfyUI-GGUF (nodes.py: UnetLoaderGGUFAdvanced(UnetLoaderGGUF) and
#   DualCLIPLoaderGGUF(CLIPLoaderGGUF) inherit FUNCTION, CATEGORY and RETURN_TYPES from a base
#   loader), city96/ComfyUI_ExtraModels (T5/nodes.py, Sana/loader.py: one loader per model family).
# Written for qpatch's codemod corpus; no code is copied. A base class, never registered itself,
# defines INPUT_TYPES, FUNCTION, CATEGORY and RETURN_TYPES and a `load` method that calls
# `self.build(...)`; each registered subclass only overrides `build` to load a different model
# (a Sana DiT, a Flux DiT, a T5 text encoder, an SD3 DiT with its own INPUT_TYPES). The loaders
# return the models; nothing here calls one.
import os

import torch

import comfy.model_management as mm
import folder_paths
from diffusers import FluxTransformer2DModel, SanaTransformer2DModel, SD3Transformer2DModel
from transformers import T5EncoderModel, T5TokenizerFast

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def diffusers_folders():
    root = os.path.join(folder_paths.models_dir, "diffusers")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


class DiffusersComponentLoader:
    """Shared plumbing: subclasses say how to build their component."""

    SUBFOLDER = None
    RETURN_NAME = "MODEL_COMPONENT"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (diffusers_folders(),),
                "dtype": (list(DTYPES), {"default": "bf16"}),
                "device": (["main_device", "offload_device"], {"default": "offload_device"}),
            }
        }

    RETURN_TYPES = ("DIFFUSERS_COMPONENT",)
    FUNCTION = "load"
    CATEGORY = "diffusers/loaders"

    def build(self, path, dtype):
        raise NotImplementedError

    def load(self, folder, dtype, device):
        path = os.path.join(folder_paths.models_dir, "diffusers", folder)
        if self.SUBFOLDER:
            path = os.path.join(path, self.SUBFOLDER)
        component = self.build(path, DTYPES[dtype])
        target = mm.get_torch_device() if device == "main_device" else mm.unet_offload_device()
        return ({"kind": self.RETURN_NAME, "model": component.to(target), "dtype": DTYPES[dtype]},)


class SanaTransformerLoader(DiffusersComponentLoader):
    SUBFOLDER = "transformer"
    RETURN_NAME = "SANA_DIT"

    def build(self, path, dtype):
        return SanaTransformer2DModel.from_pretrained(path, torch_dtype=dtype)


class FluxTransformerLoader(DiffusersComponentLoader):
    SUBFOLDER = "transformer"
    RETURN_NAME = "FLUX_DIT"

    def build(self, path, dtype):
        model = FluxTransformer2DModel.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=True)
        return model.eval()


class T5EncoderLoader(DiffusersComponentLoader):
    SUBFOLDER = "text_encoder_2"
    RETURN_NAME = "T5_ENCODER"

    def build(self, path, dtype):
        self.tokenizer = T5TokenizerFast.from_pretrained(os.path.join(os.path.dirname(path), "tokenizer_2"))
        encoder = T5EncoderModel.from_pretrained(path, torch_dtype=dtype)
        encoder.requires_grad_(False)
        return encoder


class SD3TransformerLoader(DiffusersComponentLoader):
    SUBFOLDER = "transformer"
    RETURN_NAME = "SD3_DIT"

    @classmethod
    def INPUT_TYPES(cls):
        base = super().INPUT_TYPES()
        base["optional"] = {"skip_layers": ("STRING", {"default": ""})}
        return base

    def build(self, path, dtype):
        return SD3Transformer2DModel.from_pretrained(path, torch_dtype=dtype)

    def load(self, folder, dtype, device, skip_layers=""):
        (out,) = super().load(folder, dtype, device)
        out["skip_layers"] = [int(s) for s in skip_layers.split(",") if s.strip()]
        return (out,)


NODE_CLASS_MAPPINGS = {
    "SanaTransformerLoader": SanaTransformerLoader,
    "FluxTransformerLoader": FluxTransformerLoader,
    "T5EncoderLoader": T5EncoderLoader,
    "SD3TransformerLoader": SD3TransformerLoader,
}
