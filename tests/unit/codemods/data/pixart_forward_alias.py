# Shape modeled on: city96/ComfyUI_ExtraModels (PixArt/nodes.py, PixArt/loader.py: PixArt-Sigma
#   DiT with a T5 text encoder), kijai/ComfyUI-LuminaWrapper (nodes.py: the sampler calls a
#   model method directly instead of the module).
# Written for qpatch's codemod corpus; no code is copied. The DiT is stored as `self.transformer`
# but never called under that name: the sampler takes a local alias, `model =
# self.transformer.to(device)`, and calls `model.forward(...)`, skipping the module's hooks as
# some authors do. The T5 encoder (`self.text_encoder`) and the VAE (`self.vae.decode`) are called
# in the same method. Everything runs inside torch.inference_mode(False), load included.
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from transformers import T5EncoderModel, T5Tokenizer

PIXART_DIR = os.path.join(folder_paths.models_dir, "diffusers", "PixArt-Sigma-XL-2-1024-MS")


class PixArtSigmaSampler:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 32}),
                "height": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 32}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                "cfg": ("FLOAT", {"default": 4.5, "min": 1.0, "max": 20.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sample"
    CATEGORY = "PixArt"

    def _encode(self, texts, device):
        ids = self.tokenizer(texts, padding="max_length", max_length=300, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        mask = ids.attention_mask.to(device)
        embeds = self.text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]
        return embeds, mask

    def sample(self, prompt, negative_prompt, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        with torch.inference_mode(False):
            if self.transformer is None:
                self.transformer = PixArtTransformer2DModel.from_pretrained(
                    PIXART_DIR, subfolder="transformer", torch_dtype=torch.float16
                )
                self.text_encoder = T5EncoderModel.from_pretrained(PIXART_DIR, subfolder="text_encoder", torch_dtype=torch.float16)
                self.tokenizer = T5Tokenizer.from_pretrained(PIXART_DIR, subfolder="tokenizer")
                self.vae = AutoencoderKL.from_pretrained(PIXART_DIR, subfolder="vae", torch_dtype=torch.float16)
            self.text_encoder.to(device)
            embeds, mask = self._encode([negative_prompt, prompt], device)
            self.text_encoder.to(mm.text_encoder_offload_device())

            model = self.transformer.to(device)
            scheduler = DPMSolverMultistepScheduler.from_pretrained(PIXART_DIR, subfolder="scheduler")
            scheduler.set_timesteps(steps, device=device)
            gen = torch.Generator(device).manual_seed(seed)
            latents = torch.randn(1, 4, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16)
            added = {"resolution": None, "aspect_ratio": None}
            bar = ProgressBar(steps)
            for t in scheduler.timesteps:
                latent_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                out = model.forward(
                    latent_in,
                    encoder_hidden_states=embeds,
                    encoder_attention_mask=mask,
                    timestep=t.expand(2),
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
                uncond, cond = out.chunk(2)
                noise_pred = (uncond + cfg * (cond - uncond)).chunk(2, dim=1)[0]  # drop the learned sigma
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update(1)
            model.to(mm.unet_offload_device())
            self.vae.to(device)
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            self.vae.to(mm.unet_offload_device())
        image = ((image.detach().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
        return (image.cpu(),)


NODE_CLASS_MAPPINGS = {"PixArtSigmaSampler": PixArtSigmaSampler}
