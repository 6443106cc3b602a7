# Shape modeled on: comfyanonymous/ComfyUI (comfy_extras/nodes_train.py: the core training node
#   has to leave inference mode with torch.inference_mode(False), because nodes run inside
#   torch.inference_mode()), kijai/ComfyUI-LuminaWrapper (nodes.py: DiT loaded and sampled by
#   the wrapper's own nodes).
# Written for qpatch's codemod corpus; no code is copied. Two AuraFlow samplers whose authors
# "turned gradients on" the way one does outside ComfyUI: one wraps the loop in
# `with torch.enable_grad():`, the other calls `torch.set_grad_enabled(True)` first. Neither
# leaves ComfyUI's torch.inference_mode(): inside it grad mode alone records nothing (no
# grad_fn, no saved activations; checked with torch 2.13), so both DiT calls run as plain
# inference and checkpointing them could save nothing.
import torch

import comfy.model_management as mm
from comfy.utils import ProgressBar
from diffusers import AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler


def auraflow_inputs():
    return {
        "required": {
            "model_dir": ("STRING", {"default": "AuraFlow-v0.3"}),
            "embeds": ("AURA_EMBEDS",),
            "width": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
            "height": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 100}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        }
    }


def euler(transformer, embeds, width, height, steps, cfg, seed, device):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.73)
    scheduler.set_timesteps(steps, device=device)
    gen = torch.Generator(device).manual_seed(seed)
    latents = torch.randn(1, 4, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16)
    cond = torch.cat([embeds["uncond"], embeds["cond"]]).to(device)
    bar = ProgressBar(steps)
    for t in scheduler.timesteps:
        pred = transformer(torch.cat([latents] * 2), encoder_hidden_states=cond,
                           timestep=(t / 1000).expand(2), return_dict=False)[0]
        uncond, text = pred.chunk(2)
        latents = scheduler.step(uncond + cfg * (text - uncond), t, latents, return_dict=False)[0]
        bar.update(1)
    return latents


class AuraFlowSamplerEnableGrad:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return auraflow_inputs()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "AuraFlow"

    def sample(self, model_dir, embeds, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        with torch.enable_grad():
            if self.transformer is None:
                self.transformer = AuraFlowTransformer2DModel.from_pretrained(
                    model_dir, subfolder="transformer", torch_dtype=torch.float16
                ).to(device)
            scheduler = FlowMatchEulerDiscreteScheduler(shift=1.73)
            scheduler.set_timesteps(steps, device=device)
            gen = torch.Generator(device).manual_seed(seed)
            latents = torch.randn(1, 4, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16)
            cond = torch.cat([embeds["uncond"], embeds["cond"]]).to(device)
            for t in scheduler.timesteps:
                pred = self.transformer(torch.cat([latents] * 2), encoder_hidden_states=cond,
                                        timestep=(t / 1000).expand(2), return_dict=False)[0]
                uncond, text = pred.chunk(2)
                latents = scheduler.step(uncond + cfg * (text - uncond), t, latents, return_dict=False)[0]
        return ({"samples": latents.float()},)


class AuraFlowSamplerSetGrad:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return auraflow_inputs()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "AuraFlow"

    def sample(self, model_dir, embeds, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        torch.set_grad_enabled(True)
        if self.transformer is None:
            self.transformer = AuraFlowTransformer2DModel.from_pretrained(
                model_dir, subfolder="transformer", torch_dtype=torch.float16
            ).to(device)
        latents = euler(self.transformer, embeds, width, height, steps, cfg, seed, device)
        return ({"samples": latents.float()},)


NODE_CLASS_MAPPINGS = {
    "AuraFlowSamplerEnableGrad": AuraFlowSamplerEnableGrad,
    "AuraFlowSamplerSetGrad": AuraFlowSamplerSetGrad,
}
