# Shape modeled on: musyra/ComfyUI_RH_Qwen-Image (model_loader.py: a force_reload input on the
#   pipeline loader), comfyanonymous/ComfyUI (execution.py: an IS_CHANGED result that never
#   equals the cached one, such as NaN, re-runs the node every prompt), and the
#   `IS_CHANGED ... return float("nan")` idiom copied into many community loaders.
# Written for qpatch's codemod corpus; no code is copied. Two Qwen-Image-Edit loaders with
# author-written IS_CHANGED hooks: the first returns NaN on every path, so its 40 GB pipeline
# reloads on every prompt; the second returns NaN only when the user ticks force_reload, which is
# what the author meant. The edit node calls the pipeline inside torch.no_grad().
import os

import numpy as np
import torch
from PIL import Image

import comfy.model_management as mm
import folder_paths
from diffusers import QwenImageEditPipeline


def edit_models():
    root = os.path.join(folder_paths.models_dir, "diffusers")
    return [d for d in sorted(os.listdir(root)) if "edit" in d.lower()] if os.path.isdir(root) else []


class QwenImageEditLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (edit_models(),), "offload": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ("QWEN_EDIT_PIPE",)
    FUNCTION = "load"
    CATEGORY = "QwenImageEdit"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        # "always reload so that a new model in the folder is picked up"
        return float("nan")

    def load(self, model, offload):
        path = os.path.join(folder_paths.models_dir, "diffusers", model)
        pipe = QwenImageEditPipeline.from_pretrained(path, torch_dtype=torch.bfloat16)
        if offload:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(mm.get_torch_device())
        return (pipe,)


class QwenImageEditLoaderCached:
    def __init__(self):
        self.pipe = None
        self.key = None

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (edit_models(),), "force_reload": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("QWEN_EDIT_PIPE",)
    FUNCTION = "load"
    CATEGORY = "QwenImageEdit"

    @classmethod
    def IS_CHANGED(cls, model, force_reload):
        if force_reload:
            return float("NaN")
        return model

    def load(self, model, force_reload):
        if self.pipe is None or force_reload or self.key != model:
            self.pipe = None
            mm.soft_empty_cache()
            path = os.path.join(folder_paths.models_dir, "diffusers", model)
            self.pipe = QwenImageEditPipeline.from_pretrained(path, torch_dtype=torch.bfloat16)
            self.pipe.enable_model_cpu_offload()
            self.key = model
        return (self.pipe,)


class QwenImageEditApply:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipe": ("QWEN_EDIT_PIPE",),
                "image": ("IMAGE",),
                "instruction": ("STRING", {"multiline": True, "default": ""}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 100}),
                "true_cfg_scale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 10.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "edit"
    CATEGORY = "QwenImageEdit"

    def edit(self, pipe, image, instruction, steps, true_cfg_scale, seed):
        src = Image.fromarray((image[0].cpu().numpy() * 255).astype(np.uint8))
        with torch.no_grad():
            out = pipe(image=src, prompt=instruction, negative_prompt=" ", num_inference_steps=steps,
                       true_cfg_scale=true_cfg_scale, generator=torch.manual_seed(seed))
        return (torch.from_numpy(np.array(out.images[0]).astype(np.float32) / 255.0)[None],)


NODE_CLASS_MAPPINGS = {
    "QwenImageEditLoader": QwenImageEditLoader,
    "QwenImageEditLoaderCached": QwenImageEditLoaderCached,
    "QwenImageEditApply": QwenImageEditApply,
}
