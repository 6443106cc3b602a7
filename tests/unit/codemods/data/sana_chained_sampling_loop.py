# Shape modeled on: city96/ComfyUI_ExtraModels (Sana/nodes.py, Sana/loader.py: Sana DiT loaded
#   into a node), kijai/ComfyUI-LuminaWrapper (nodes.py: the sampler owns its Euler loop).
# Written for qpatch's codemod corpus; no code is copied. The sampler turns autograd on for the
# whole run with `with torch.inference_mode(False), torch.enable_grad():` and its Euler loop
# chains the steps: `latents = latents - dt * noise_pred` with no detach, so every step's graph
# hangs on the next one and autograd keeps all of them until the node returns. Nobody ever
# calls backward. Checkpointing the DiT call shrinks each step's share; only turning autograd
# off removes the chain.
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import SanaTransformer2DModel

SANA_ROOT = os.path.join(folder_paths.models_dir, "sana")


class SanaEulerSampler:
    def __init__(self):
        self.transformer = None
        self.loaded_from = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": (
                    sorted(os.listdir(SANA_ROOT)) if os.path.isdir(SANA_ROOT) else [],
                ),
                "embeds": ("SANA_GEMMA_EMBEDS",),
                "width": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 32}),
                "height": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 32}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": 4.5, "min": 1.0, "max": 20.0}),
                "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "Sana"

    def sample(self, model_folder, embeds, width, height, steps, cfg, shift, seed):
        device = mm.get_torch_device()
        path = os.path.join(SANA_ROOT, model_folder)
        with torch.inference_mode(False), torch.enable_grad():
            # loaded in here: weights made under ComfyUI's inference mode break autograd
            if self.loaded_from != path:
                self.transformer = SanaTransformer2DModel.from_pretrained(
                    path, subfolder="transformer", torch_dtype=torch.bfloat16
                )
                self.loaded_from = path
            self.transformer.to(device)
            cond = embeds["cond"].to(device, torch.bfloat16).clone()
            uncond = embeds["uncond"].to(device, torch.bfloat16).clone()
            mask = torch.cat([embeds["uncond_mask"], embeds["cond_mask"]]).to(device).clone()
            gen = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn(1, 32, height // 32, width // 32, generator=gen).to(
                device, torch.bfloat16
            )
            sigmas = torch.linspace(1.0, 0.0, steps + 1, device=device)
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
            bar = ProgressBar(steps)
            for i in range(steps):
                t = sigmas[i]
                latent_in = torch.cat([latents, latents])
                noise_pred = self.transformer(
                    latent_in,
                    encoder_hidden_states=torch.cat([uncond, cond]),
                    encoder_attention_mask=mask,
                    timestep=(t * 1000).expand(2),
                    return_dict=False,
                )[0]
                noise_uncond, noise_cond = noise_pred.chunk(2)
                noise_pred = noise_uncond + cfg * (noise_cond - noise_uncond)
                latents = latents - (sigmas[i] - sigmas[i + 1]) * noise_pred
                bar.update(1)
        self.transformer.to(mm.unet_offload_device())
        return ({"samples": latents.detach().float().cpu()},)


NODE_CLASS_MAPPINGS = {"SanaEulerSampler": SanaEulerSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"SanaEulerSampler": "Sana Euler Sampler (diffusers)"}
