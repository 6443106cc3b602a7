# Shape modeled on: musyra/ComfyUI_RH_Qwen-Image (model_loader.py, optimized_nodes.py),
#   siliconflow/QwenImage-ComfyUI (__init__.py).
# Written for qpatch's codemod corpus; no code is copied, only the shape: a loader node builds a
# diffusers QwenImagePipeline with from_pretrained and caches it on the instance; a generate node
# gets it through a custom "QWEN_IMAGE_PIPE" input and calls it as pipe(prompt=...,
# num_inference_steps=...). Nothing in this file turns autograd back on.
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from diffusers import QwenImagePipeline

QWEN_IMAGE_DIR = os.path.join(folder_paths.models_dir, "Qwen-Image")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ASPECTS = {
    "1:1": (1328, 1328),
    "16:9": (1664, 928),
    "9:16": (928, 1664),
    "4:3": (1472, 1104),
    "3:4": (1104, 1472),
}


class QwenImagePipelineLoader:
    """Loads the whole diffusers pipeline once and hands it to the generate node."""

    def __init__(self):
        self.pipe = None
        self.loaded_key = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_dir": ("STRING", {"default": QWEN_IMAGE_DIR}),
                "dtype": (list(DTYPES), {"default": "bf16"}),
                "vae_tiling": ("BOOLEAN", {"default": True}),
            }
        }

    RETURN_TYPES = ("QWEN_IMAGE_PIPE",)
    RETURN_NAMES = ("pipe",)
    FUNCTION = "load"
    CATEGORY = "QwenImage/loaders"

    def load(self, model_dir, dtype, vae_tiling):
        key = (model_dir, dtype)
        if self.pipe is None or self.loaded_key != key:
            self.pipe = None
            mm.soft_empty_cache()
            self.pipe = QwenImagePipeline.from_pretrained(
                model_dir,
                torch_dtype=DTYPES[dtype],
                local_files_only=os.path.isdir(model_dir),
            )
            self.pipe.to(mm.get_torch_device())
            self.loaded_key = key
        if vae_tiling:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()
        return (self.pipe,)


class QwenImageGenerate:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipe": ("QWEN_IMAGE_PIPE",),
                "prompt": ("STRING", {"multiline": True, "default": "a red fox in the snow"}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "aspect": (list(ASPECTS), {"default": "16:9"}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 200}),
                "true_cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 20.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "QwenImage"

    def generate(self, pipe, prompt, negative_prompt, aspect, steps, true_cfg, seed):
        width, height = ASPECTS[aspect]
        bar = comfy.utils.ProgressBar(steps)

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            bar.update(1)
            return callback_kwargs

        generator = torch.Generator(device="cpu").manual_seed(seed)
        result = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or " ",
            width=width,
            height=height,
            num_inference_steps=steps,
            true_cfg_scale=true_cfg,
            generator=generator,
            callback_on_step_end=on_step_end,
        )
        frames = [np.asarray(img).astype(np.float32) / 255.0 for img in result.images]
        return (torch.from_numpy(np.stack(frames)),)


NODE_CLASS_MAPPINGS = {
    "QwenImagePipelineLoader": QwenImagePipelineLoader,
    "QwenImageGenerate": QwenImageGenerate,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "QwenImagePipelineLoader": "Qwen-Image Pipeline Loader",
    "QwenImageGenerate": "Qwen-Image Generate",
}
