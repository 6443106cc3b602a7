# Shape modeled on: kijai/ComfyUI-CogVideoXWrapper (model_loading.py: transformer, VAE and
#   scheduler loaded separately and put into a CogVideoXPipeline returned as "COGVIDEOPIPE";
#   nodes.py: the sampler reaches into pipe.transformer / pipe.vae / pipe.scheduler).
# Written for qpatch's codemod corpus; no code is copied. The loader assembles a diffusers
# CogVideoXPipeline from parts, but the sampler never calls the pipeline: it runs its own DDIM
# loop and calls the pipeline's parts, `pipe.transformer(...)` once or twice per step,
# `pipe.scheduler.step(...)`, and at the end `pipe.vae.decode(...)`. The loop runs under
# torch.inference_mode(False) because the author's trajectory hooks write into tensors in place;
# the loader also builds the pipeline under it, so the weights are ordinary tensors.
import json
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

script_directory = os.path.dirname(os.path.abspath(__file__))


class CogVideoPipeLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (["THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX-5b-I2V"],),
                "precision": (["fp16", "bf16", "fp32"], {"default": "bf16"}),
            }
        }

    RETURN_TYPES = ("COGVIDEOPIPE",)
    RETURN_NAMES = ("cogvideo_pipe",)
    FUNCTION = "loadmodel"
    CATEGORY = "CogVideo"

    def loadmodel(self, model, precision):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
        base = os.path.join(folder_paths.models_dir, "CogVideo", model.split("/")[-1])
        with open(os.path.join(script_directory, "configs", "scheduler_config_5b.json")) as f:
            scheduler = CogVideoXDDIMScheduler.from_config(json.load(f))
        with torch.inference_mode(False):
            transformer = CogVideoXTransformer3DModel.from_pretrained(base, subfolder="transformer", torch_dtype=dtype)
            vae = AutoencoderKLCogVideoX.from_pretrained(base, subfolder="vae", torch_dtype=dtype)
            vae.enable_tiling()
            pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
        pipe.to(mm.unet_offload_device())
        return ({"pipe": pipe, "dtype": dtype, "model_name": model},)


class CogVideoOwnLoopSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "cogvideo_pipe": ("COGVIDEOPIPE",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "width": ("INT", {"default": 720, "min": 128, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 480, "min": 128, "max": 2048, "step": 16}),
                "num_frames": ("INT", {"default": 49, "min": 9, "max": 1024, "step": 8}),
                "steps": ("INT", {"default": 50, "min": 1}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0, "step": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "process"
    CATEGORY = "CogVideo"

    def process(self, cogvideo_pipe, positive, negative, width, height, num_frames, steps, cfg, seed):
        device = mm.get_torch_device()
        pipe, dtype = cogvideo_pipe["pipe"], cogvideo_pipe["dtype"]
        with torch.inference_mode(False):
            pipe.transformer.to(device)
            cond = torch.cat([negative[0][0], positive[0][0]]).to(device, dtype).clone()
            lat_t, lat_h, lat_w = (num_frames - 1) // 4 + 1, height // 8, width // 8
            gen = torch.Generator(device).manual_seed(seed)
            latents = torch.randn(1, lat_t, 16, lat_h, lat_w, generator=gen, device=device, dtype=dtype)
            latents = latents * pipe.scheduler.init_noise_sigma
            pipe.scheduler.set_timesteps(steps, device=device)
            rope = get_3d_rotary_pos_embed(64, (lat_h // 2, lat_w // 2), lat_t, device=device)
            old_pred = None
            bar = ProgressBar(steps)
            for i, t in enumerate(pipe.scheduler.timesteps):
                latent_in = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
                noise_pred = pipe.transformer(
                    hidden_states=latent_in,
                    encoder_hidden_states=cond,
                    timestep=t.expand(2),
                    image_rotary_emb=rope,
                    return_dict=False,
                )[0].float()
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + cfg * (text - uncond)
                latents, old_pred = pipe.scheduler.step(
                    noise_pred, old_pred, t, pipe.scheduler.timesteps[i - 1] if i else None, latents,
                    generator=gen, return_dict=False,
                )
                latents = latents.to(dtype)
                bar.update(1)
            pipe.transformer.to(mm.unet_offload_device())
            pipe.vae.to(device)
            frames = pipe.vae.decode(latents.permute(0, 2, 1, 3, 4) / pipe.vae.config.scaling_factor).sample
            pipe.vae.to(mm.unet_offload_device())
        video = ((frames.detach().float() + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)
        return (video.cpu(),)


NODE_CLASS_MAPPINGS = {"CogVideoPipeLoader": CogVideoPipeLoader, "CogVideoOwnLoopSampler": CogVideoOwnLoopSampler}
