# Shape modeled on: musyra/ComfyUI_RH_Qwen-Image (model_loader.py: apply_optimizations),
#   kijai/ComfyUI-CogVideoXWrapper (model_loading.py: enable_sequential_cpu_offload),
#   kijai/ComfyUI-DiffusersStableCascade (nodes.py: pipeline cached on self).
# Written for qpatch's codemod corpus; no code is copied. One node loads a generic
# DiffusionPipeline (which resolves to QwenImagePipeline for a Qwen-Image folder), puts it behind
# accelerate's model or sequential CPU offload and calls it as a pipeline. The author runs the
# call outside inference mode because the offload hooks move weights between devices, which
# fails on inference tensors; that turns grad mode on, but a diffusers pipeline's __call__ runs
# under its own torch.no_grad(), so there is nothing for checkpointing to save.
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from diffusers import DiffusionPipeline

OFFLOAD_MODES = ["none", "model_cpu_offload", "sequential_cpu_offload"]


def pil_to_tensor(images):
    arrays = [np.array(img.convert("RGB")).astype(np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays))


class QwenImageLowVRAM:
    """Text to image with Qwen-Image on a 24 GB card: the pipeline stays resident in RAM."""

    def __init__(self):
        self.pipeline = None
        self.pipeline_key = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": (os.listdir(os.path.join(folder_paths.models_dir, "diffusers")),),
                "offload": (OFFLOAD_MODES, {"default": "model_cpu_offload"}),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 1328, "min": 256, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 1328, "min": 256, "max": 2048, "step": 16}),
                "steps": ("INT", {"default": 28, "min": 1, "max": 100}),
                "true_cfg_scale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 10.0}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            },
            "optional": {
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "attention_slicing": ("BOOLEAN", {"default": False}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "QwenImage/lowvram"

    def _ensure_pipeline(self, model_folder, offload, attention_slicing):
        key = (model_folder, offload, attention_slicing)
        if self.pipeline is not None and self.pipeline_key == key:
            return
        self.pipeline = None
        mm.unload_all_models()
        mm.soft_empty_cache()
        path = os.path.join(folder_paths.models_dir, "diffusers", model_folder)
        self.pipeline = DiffusionPipeline.from_pretrained(
            path, torch_dtype=torch.bfloat16, use_safetensors=True
        )
        if offload == "model_cpu_offload":
            self.pipeline.enable_model_cpu_offload()
        elif offload == "sequential_cpu_offload":
            self.pipeline.enable_sequential_cpu_offload()
        else:
            self.pipeline.to(mm.get_torch_device())
        if attention_slicing:
            self.pipeline.enable_attention_slicing()
        self.pipeline.vae.enable_tiling()
        self.pipeline_key = key

    def run(
        self,
        model_folder,
        offload,
        prompt,
        width,
        height,
        steps,
        true_cfg_scale,
        seed,
        negative_prompt="",
        attention_slicing=False,
    ):
        self._ensure_pipeline(model_folder, offload, attention_slicing)
        bar = comfy.utils.ProgressBar(steps)

        def step_done(pipe, step_index, timestep, callback_kwargs):
            bar.update_absolute(step_index + 1)
            return callback_kwargs

        # accelerate's hooks copy weights onto the GPU for each submodule; under ComfyUI's
        # inference mode those copies become inference tensors and the next move fails.
        with torch.inference_mode(False):
            generator = torch.Generator("cpu").manual_seed(seed)
            output = self.pipeline(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                width=width,
                height=height,
                num_inference_steps=steps,
                true_cfg_scale=true_cfg_scale,
                generator=generator,
                callback_on_step_end=step_done,
            )
        return (pil_to_tensor(output.images),)


NODE_CLASS_MAPPINGS = {"QwenImageLowVRAM": QwenImageLowVRAM}
NODE_DISPLAY_NAME_MAPPINGS = {"QwenImageLowVRAM": "Qwen-Image (CPU offload)"}
