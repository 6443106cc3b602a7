# Shape modeled on: kijai/ComfyUI-CogVideoXWrapper (model_loading.py: transformer built with
#   from_config, then load_state_dict(load_torch_file(path))), city96/ComfyUI_ExtraModels
#   (PixArt/loader.py: config guessed from the state dict), huggingface/diffusers
#   (FromOriginalModelMixin.from_single_file on FluxTransformer2DModel).
# Written for qpatch's codemod corpus; no code is copied. The DiT comes from one .safetensors
# file in models/diffusion_models, never from a diffusers folder: either
# `FluxTransformer2DModel.from_single_file(path)`, or `load_file(path)` then
# `FluxTransformer2DModel.from_config(cfg)` + `load_state_dict(sd)` for checkpoints that
# from_single_file does not know. Both branches bind `self.transformer`; the call runs once per
# step inside `torch.inference_mode(False)`, where the load happens too.
import json
import os

import torch
from safetensors.torch import load_file

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

script_dir = os.path.dirname(os.path.abspath(__file__))


def guess_flux_config(sd):
    with open(os.path.join(script_dir, "configs", "flux_transformer.json")) as f:
        cfg = json.load(f)
    cfg["num_layers"] = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    cfg["num_single_layers"] = len(
        {k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")}
    )
    cfg["guidance_embeds"] = any(k.startswith("time_text_embed.guidance_embedder") for k in sd)
    return cfg


class FluxSingleFileSampler:
    def __init__(self):
        self.transformer = None
        self.current = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": (folder_paths.get_filename_list("diffusion_models"),),
                "load_mode": (["from_single_file", "state_dict"], {"default": "from_single_file"}),
                "conditioning": ("FLUX_TEXT_EMBEDS",),
                "width": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 10.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "FluxSingleFile"

    def _load(self, path, load_mode):
        if load_mode == "from_single_file":
            self.transformer = FluxTransformer2DModel.from_single_file(
                path, torch_dtype=torch.bfloat16
            )
        else:
            sd = load_file(path)
            self.transformer = FluxTransformer2DModel.from_config(guess_flux_config(sd))
            self.transformer.load_state_dict(sd, strict=True)
            self.transformer.to(torch.bfloat16)
        self.current = (path, load_mode)

    def sample(self, unet_name, load_mode, conditioning, width, height, steps, guidance, seed):
        device = mm.get_torch_device()
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        with torch.inference_mode(False):
            if self.transformer is None or self.current != (path, load_mode):
                self._load(path, load_mode)
            self.transformer.to(device)
            prompt_embeds = conditioning["prompt_embeds"].to(device).clone()
            pooled = conditioning["pooled"].to(device).clone()
            text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device)
            h, w = height // 16, width // 16
            img_ids = torch.zeros(h, w, 3, device=device)
            img_ids[..., 1] += torch.arange(h, device=device)[:, None]
            img_ids[..., 2] += torch.arange(w, device=device)[None, :]
            img_ids = img_ids.reshape(h * w, 3)
            gen = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn(1, h * w, 64, generator=gen).to(device, torch.bfloat16)
            scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
            scheduler.set_timesteps(steps, device=device)
            g = torch.full((1,), guidance, device=device)
            bar = ProgressBar(steps)
            for t in scheduler.timesteps:
                velocity = self.transformer(
                    hidden_states=latents,
                    timestep=(t / 1000).expand(1).to(latents.dtype),
                    guidance=g,
                    pooled_projections=pooled,
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=img_ids,
                    return_dict=False,
                )[0]
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                bar.update(1)
        self.transformer.to(mm.unet_offload_device())
        return ({"samples": latents.detach().float().cpu(), "flux_packed": (h, w)},)


NODE_CLASS_MAPPINGS = {"FluxSingleFileSampler": FluxSingleFileSampler}
