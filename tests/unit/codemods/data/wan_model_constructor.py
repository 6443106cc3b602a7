# Shape modeled on: kijai/ComfyUI-WanVideoWrapper (nodes_model_loading.py: WanVideoModelLoader
#   builds WanModel from dims read off the state dict), kijai/ComfyUI-LuminaWrapper (nodes.py:
#   model class built by its constructor, then load_state_dict).
# Written for qpatch's codemod corpus; no code is copied. The DiT is never loaded with
# from_pretrained: it is built by its constructor, `WanModel(...)`, with its sizes guessed from
# the safetensors file, then filled with `load_state_dict(sd, assign=True)`. Build, fill and the
# sampling loop all run inside `torch.inference_mode(False), torch.enable_grad()`, so the
# weights are ordinary tensors and every `self.transformer(...)` call records a graph. A UMT5
# text encoder is loaded and called in a second node of the same file.
import math

import torch
from accelerate import init_empty_weights

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar, load_torch_file
from transformers import AutoTokenizer, UMT5EncoderModel

from .wanvideo.modules.model import WanModel
from .wanvideo.schedulers.flow_match import FlowMatchScheduler

device = mm.get_torch_device()
offload_device = mm.unet_offload_device()


def wan_config_from_state_dict(sd):
    dim = sd["patch_embedding.weight"].shape[0]
    heads, layers = {5120: (40, 40), 1536: (12, 30)}.get(dim, (24, 30))
    return {
        "model_type": "i2v" if "blocks.0.cross_attn.k_img.weight" in sd else "t2v",
        "dim": dim,
        "in_dim": sd["patch_embedding.weight"].shape[1],
        "ffn_dim": sd["blocks.0.ffn.0.bias"].shape[0],
        "num_heads": heads,
        "num_layers": layers,
        "out_dim": 16,
        "text_len": 512,
        "freq_dim": 256,
        "eps": 1e-6,
    }


class WanMiniT5Encode:
    def __init__(self):
        self.text_encoder = None
        self.tokenizer = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "t5_folder": (folder_paths.get_filename_list("text_encoders"),),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
            }
        }

    RETURN_TYPES = ("WANMINI_EMBEDS",)
    FUNCTION = "encode"
    CATEGORY = "WanMini"

    def encode(self, t5_folder, prompt):
        if self.text_encoder is None:
            path = folder_paths.get_full_path_or_raise("text_encoders", t5_folder)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.text_encoder = UMT5EncoderModel.from_pretrained(
                path, torch_dtype=torch.bfloat16
            ).eval()
        self.text_encoder.to(device)
        ids = self.tokenizer(
            [prompt], padding="max_length", max_length=512, truncation=True, return_tensors="pt"
        )
        context = self.text_encoder(
            ids.input_ids.to(device), attention_mask=ids.attention_mask.to(device)
        )
        self.text_encoder.to(offload_device)
        return (context.last_hidden_state,)


class WanMiniSampler:
    def __init__(self):
        self.transformer = None
        self.loaded_path = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (folder_paths.get_filename_list("diffusion_models"),),
                "embeds": ("WANMINI_EMBEDS",),
                "width": ("INT", {"default": 832, "min": 64, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 480, "min": 64, "max": 2048, "step": 16}),
                "num_frames": ("INT", {"default": 33, "min": 1, "max": 241, "step": 4}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                "shift": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 20.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "WanMini"

    def sample(self, model, embeds, width, height, num_frames, steps, shift, seed):
        path = folder_paths.get_full_path_or_raise("diffusion_models", model)
        with torch.inference_mode(False), torch.enable_grad():
            if self.transformer is None or self.loaded_path != path:
                self.transformer = None
                mm.soft_empty_cache()
                sd = load_torch_file(path, safe_load=True)
                with init_empty_weights():
                    transformer = WanModel(**wan_config_from_state_dict(sd))
                transformer.load_state_dict(sd, assign=True)
                self.transformer = transformer.to(device, torch.bfloat16).eval()
                self.loaded_path = path
                del sd
            context = [embeds[0].to(device).clone()]
            lat_t, lat_h, lat_w = (num_frames - 1) // 4 + 1, height // 8, width // 8
            seq_len = math.ceil(lat_h * lat_w / 4 * lat_t)
            gen = torch.Generator("cpu").manual_seed(seed)
            latent = torch.randn(16, lat_t, lat_h, lat_w, generator=gen).to(device, torch.bfloat16)
            scheduler = FlowMatchScheduler(shift=shift, sigma_min=0.0, extra_one_step=True)
            scheduler.set_timesteps(steps)
            bar = ProgressBar(steps)
            for t in scheduler.timesteps:
                timestep = torch.stack([t]).to(device)
                flow = self.transformer([latent], t=timestep, context=context, seq_len=seq_len)[0]
                latent = scheduler.step(flow, t, latent)
                bar.update(1)
        return ({"samples": latent.detach().unsqueeze(0).float().cpu()},)


NODE_CLASS_MAPPINGS = {"WanMiniT5Encode": WanMiniT5Encode, "WanMiniSampler": WanMiniSampler}
