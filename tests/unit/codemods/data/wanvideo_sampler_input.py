# Shape modeled on: kijai/ComfyUI-WanVideoWrapper (nodes_sampler.py: WanVideoSampler.process,
#   nodes.py: WanVideoTextEncode / WanVideoDecode, nodes_model_loading.py: WanVideoBlockSwap).
# Written for qpatch's codemod corpus; no code is copied. No node here loads anything: the DiT
# arrives from a loader node in another file through a "WANVIDEOMODEL" input, the T5 encoder
# through "WANTEXTENCODER", the VAE through "WANVAE". The sampler pulls the transformer out of
# the model patcher and calls `transformer(...)` in its loop. Block swapping rewrites parameter
# storage in place, which inference tensors refuse, so the author runs the loop under
# torch.inference_mode(False) (grad mode comes back on with it) and puts the weights on the
# GPU inside that block, from the state dict the loader left on the patcher, so they are ordinary
# tensors (not inference tensors) and autograd records every step.
import math

import torch
from tqdm import tqdm

import comfy.model_management as mm
from comfy.utils import ProgressBar

from .nodes_model_loading import load_weights
from .wanvideo.schedulers import get_scheduler, scheduler_list

device = mm.get_torch_device()
offload_device = mm.unet_offload_device()


class WanVideoBlockSwapArgs:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"blocks_to_swap": ("INT", {"default": 20, "min": 0, "max": 40})}}

    RETURN_TYPES = ("BLOCKSWAPARGS",)
    FUNCTION = "setargs"
    CATEGORY = "WanVideoWrapper"

    def setargs(self, **kwargs):
        return (kwargs,)


class WanVideoTextEncodeSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "t5": ("WANTEXTENCODER",),
                "positive_prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
            }
        }

    RETURN_TYPES = ("WANVIDEOTEXTEMBEDS",)
    FUNCTION = "process"
    CATEGORY = "WanVideoWrapper"

    def process(self, t5, positive_prompt, negative_prompt):
        encoder = t5["model"]
        encoder.model.to(device)
        context = encoder([positive_prompt], device)
        context_null = encoder([negative_prompt], device)
        encoder.model.to(offload_device)
        return ({"prompt_embeds": context, "negative_prompt_embeds": context_null},)


class WanVideoSimpleSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("WANVIDEOMODEL",),
                "text_embeds": ("WANVIDEOTEXTEMBEDS",),
                "image_embeds": ("WANVIDIMAGE_EMBEDS",),
                "steps": ("INT", {"default": 30, "min": 1}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.01}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "scheduler": (scheduler_list, {"default": "unipc"}),
            },
            "optional": {"block_swap_args": ("BLOCKSWAPARGS",)},
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "process"
    CATEGORY = "WanVideoWrapper"

    def process(
        self,
        model,
        text_embeds,
        image_embeds,
        steps,
        cfg,
        shift,
        seed,
        scheduler,
        block_swap_args=None,
    ):
        patcher = model
        transformer = patcher.model.diffusion_model
        if block_swap_args is not None:
            transformer.blocks_to_swap = block_swap_args["blocks_to_swap"]

        seed_g = torch.Generator(device=torch.device("cpu")).manual_seed(seed)
        lat_h, lat_w = image_embeds["lat_h"], image_embeds["lat_w"]
        frames = (image_embeds["num_frames"] - 1) // 4 + 1
        seq_len = math.ceil(lat_h * lat_w / 4 * frames)

        with torch.inference_mode(False):
            load_weights(
                transformer,
                patcher.model["sd"],
                base_dtype=patcher.model["base_dtype"],
                transformer_load_device=device,
                block_swap_args=block_swap_args,
            )
            # the embeds were made under inference mode in another node: copy them in here
            positive = [e.to(device).clone() for e in text_embeds["prompt_embeds"]]
            negative = [e.to(device).clone() for e in text_embeds["negative_prompt_embeds"]]
            sample_scheduler, timesteps, _, _ = get_scheduler(
                scheduler, steps, 0, -1, shift, device, transformer.dim
            )
            latent = torch.randn(16, frames, lat_h, lat_w, generator=seed_g).to(device)
            pbar = ProgressBar(len(timesteps))
            for t in tqdm(timesteps):
                timestep = torch.tensor([t], device=device)
                noise_pred = transformer([latent], t=timestep, context=positive, seq_len=seq_len)[0]
                if cfg != 1.0:
                    noise_uncond = transformer(
                        [latent], t=timestep, context=negative, seq_len=seq_len
                    )[0]
                    noise_pred = noise_uncond + cfg * (noise_pred - noise_uncond)
                latent = sample_scheduler.step(
                    noise_pred.unsqueeze(0),
                    t,
                    latent.unsqueeze(0),
                    return_dict=False,
                    generator=seed_g,
                )[0].squeeze(0)
                pbar.update(1)
        transformer.to(offload_device)
        mm.soft_empty_cache()
        return ({"samples": latent.detach().unsqueeze(0).cpu()},)


class WanVideoDecodeSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("WANVAE",),
                "samples": ("LATENT",),
                "enable_vae_tiling": ("BOOLEAN", {"default": False}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "WanVideoWrapper"

    def decode(self, vae, samples, enable_vae_tiling):
        vae.to(device)
        latents = samples["samples"].to(device, vae.dtype)
        video = vae.decode(latents, device=device, tiled=enable_vae_tiling)[0]
        vae.to(offload_device)
        video = (video.clamp(-1.0, 1.0) + 1.0) / 2.0
        return (video.permute(1, 2, 3, 0).float().cpu(),)


NODE_CLASS_MAPPINGS = {
    "WanVideoBlockSwapArgs": WanVideoBlockSwapArgs,
    "WanVideoTextEncodeSimple": WanVideoTextEncodeSimple,
    "WanVideoSimpleSampler": WanVideoSimpleSampler,
    "WanVideoDecodeSimple": WanVideoDecodeSimple,
}
