# Shape modeled on: siliconflow/QwenImage-ComfyUI (__init__.py: `with torch.no_grad():` around
#   the model call), kijai/ComfyUI-DiffusersStableCascade (nodes.py: model cached on self in
#   the node), comfyanonymous/ComfyUI (comfy_extras/nodes_train.py: torch.inference_mode(False)
#   to compute gradients inside a node).
# Written for qpatch's codemod corpus; no code is copied. Two SD3 sampler nodes call their DiT
# where no graph can be recorded: one inside `with torch.no_grad():`, one in a method decorated
# with `@torch.inference_mode()`. The same file does turn autograd back on, in a latent
# smoothing node that takes the gradient of a total-variation loss (no model there), so "the
# file never turns autograd on" is not what protects the two DiT calls: the lexical no-grad
# context is.
import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

SD3_DIRS = folder_paths.get_folder_paths("diffusers")


def sd3_inputs():
    return {
        "required": {
            "model_path": ("STRING", {"default": "stable-diffusion-3.5-medium"}),
            "conditioning": ("SD3_EMBEDS",),
            "width": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 64}),
            "height": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 64}),
            "steps": ("INT", {"default": 28, "min": 1, "max": 100}),
            "cfg": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 20.0}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        }
    }


class SD3SamplerNoGrad:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return sd3_inputs()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "SD3Diffusers"

    def sample(self, model_path, conditioning, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        if self.transformer is None:
            self.transformer = SD3Transformer2DModel.from_pretrained(
                model_path, subfolder="transformer", torch_dtype=torch.float16
            ).to(device)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(steps, device=device)
        gen = torch.Generator(device).manual_seed(seed)
        latents = torch.randn(
            1, 16, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16
        )
        embeds = torch.cat([conditioning["uncond"], conditioning["cond"]])
        pooled = torch.cat([conditioning["uncond_pooled"], conditioning["pooled"]])
        bar = ProgressBar(steps)
        with torch.no_grad():
            for t in scheduler.timesteps:
                pred = self.transformer(
                    hidden_states=torch.cat([latents] * 2),
                    timestep=t.expand(2),
                    encoder_hidden_states=embeds,
                    pooled_projections=pooled,
                    return_dict=False,
                )[0]
                uncond, cond = pred.chunk(2)
                latents = scheduler.step(
                    uncond + cfg * (cond - uncond), t, latents, return_dict=False
                )[0]
                bar.update(1)
        return ({"samples": latents.float()},)


class SD3SamplerInferenceMode:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return sd3_inputs()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "SD3Diffusers"

    @torch.inference_mode()
    def sample(self, model_path, conditioning, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        if self.transformer is None:
            self.transformer = SD3Transformer2DModel.from_pretrained(
                model_path, subfolder="transformer", torch_dtype=torch.float16
            )
        self.transformer.to(device)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(steps, device=device)
        gen = torch.Generator(device).manual_seed(seed)
        latents = torch.randn(
            1, 16, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16
        )
        for t in scheduler.timesteps:
            cond = self.transformer(
                latents,
                encoder_hidden_states=conditioning["cond"],
                pooled_projections=conditioning["pooled"],
                timestep=t.expand(1),
            ).sample
            uncond = self.transformer(
                latents,
                encoder_hidden_states=conditioning["uncond"],
                pooled_projections=conditioning["uncond_pooled"],
                timestep=t.expand(1),
            ).sample
            latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
        self.transformer.to(mm.unet_offload_device())
        return ({"samples": latents.float()},)


class LatentTVSmooth:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT",),
                "strength": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01}),
                "iterations": ("INT", {"default": 10, "min": 1, "max": 200}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "smooth"
    CATEGORY = "latent/filters"

    def smooth(self, samples, strength, iterations):
        with torch.inference_mode(False), torch.enable_grad():
            x = samples["samples"].clone().requires_grad_(True)
            for _ in range(iterations):
                tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
                    x[..., 1:] - x[..., :-1]
                ).abs().mean()
                (grad,) = torch.autograd.grad(tv, x)
                x = (x - strength * grad).detach().requires_grad_(True)
        return ({**samples, "samples": x.detach()},)


NODE_CLASS_MAPPINGS = {
    "SD3SamplerNoGrad": SD3SamplerNoGrad,
    "SD3SamplerInferenceMode": SD3SamplerInferenceMode,
    "LatentTVSmooth": LatentTVSmooth,
}
