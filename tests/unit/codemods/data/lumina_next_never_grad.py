# Shape modeled on: kijai/ComfyUI-LuminaWrapper (nodes.py: DownloadAndLoadLuminaModel builds the
#   NextDiT from its training args, Gemma loaded with AutoModel, LuminaT2ISampler calls the
#   model's forward_with_cfg in an ODE loop).
# Written for qpatch's codemod corpus; no code is copied. The loader builds the NextDiT through a
# name lookup in its module (`nextdit.__dict__[args.model](...)`) and fills it with
# load_state_dict; the Gemma text encoder comes from `AutoModel.from_pretrained("google/gemma-2b")`,
# so its class name says nothing about what it is. Nothing anywhere in this file turns autograd
# back on (no enable_grad, no set_grad_enabled(True), no inference_mode(False)): every call runs
# under ComfyUI's own torch.inference_mode(), and there is nothing for checkpointing to save.
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar, load_torch_file
from transformers import AutoModel, AutoTokenizer

from .lumina_models import nextdit


class LuminaNextModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (["Alpha-VLLM/Lumina-Next-SFT", "Alpha-VLLM/Lumina-Next-T2I"],),
                "hf_token": ("STRING", {"default": ""}),
            }
        }

    RETURN_TYPES = ("LUMINAMODEL",)
    FUNCTION = "load"
    CATEGORY = "LuminaNext"

    def load(self, model, hf_token):
        device = mm.get_torch_device()
        path = os.path.join(folder_paths.models_dir, "lumina", model.split("/")[-1])
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=model, local_dir=path, ignore_patterns=["*ema*"])
        args = torch.load(os.path.join(path, "model_args.pth"), weights_only=False)
        tokenizer = AutoTokenizer.from_pretrained("google/gemma-2b", token=hf_token or None)
        tokenizer.padding_side = "right"
        text_encoder = AutoModel.from_pretrained("google/gemma-2b", torch_dtype=torch.float16, token=hf_token or None)
        text_encoder.eval().to(mm.text_encoder_offload_device())
        dit = nextdit.__dict__[args.model](qk_norm=args.qk_norm, cap_feat_dim=text_encoder.config.hidden_size)
        dit.load_state_dict(load_torch_file(os.path.join(path, "consolidated.00-of-01.safetensors")), strict=True)
        dit.eval().to(device, dtype=torch.float16)
        return ({"model": dit, "text_encoder": text_encoder, "tokenizer": tokenizer, "args": args},)


class LuminaGemmaEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lumina_model": ("LUMINAMODEL",),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
            }
        }

    RETURN_TYPES = ("LUMINA_EMBEDS",)
    FUNCTION = "encode"
    CATEGORY = "LuminaNext"

    def encode(self, lumina_model, prompt, negative_prompt):
        device = mm.get_torch_device()
        tokenizer, text_encoder = lumina_model["tokenizer"], lumina_model["text_encoder"]
        text_encoder.to(device)
        batch = tokenizer([prompt, negative_prompt], padding=True, pad_to_multiple_of=8,
                          max_length=256, truncation=True, return_tensors="pt")
        mask = batch.attention_mask.to(device)
        feats = text_encoder(input_ids=batch.input_ids.to(device), attention_mask=mask,
                             output_hidden_states=True).hidden_states[-2]
        text_encoder.to(mm.text_encoder_offload_device())
        return ({"cap_feats": feats, "cap_mask": mask},)


class LuminaNextSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lumina_model": ("LUMINAMODEL",),
                "embeds": ("LUMINA_EMBEDS",),
                "width": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 256, "max": 2048, "step": 16}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 200}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 20.0}),
                "t_shift": ("INT", {"default": 4, "min": 1, "max": 20}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "LuminaNext"

    def sample(self, lumina_model, embeds, width, height, steps, cfg, t_shift, seed):
        device = mm.get_torch_device()
        model = lumina_model["model"]
        gen = torch.Generator(device).manual_seed(seed)
        z = torch.randn(1, 4, height // 8, width // 8, generator=gen, device=device, dtype=torch.float16)
        ts = torch.linspace(0.0, 1.0, steps + 1, device=device)
        ts = ts / (ts + t_shift - t_shift * ts)  # time shift toward the noisy end
        kwargs = {"cap_feats": embeds["cap_feats"], "cap_mask": embeds["cap_mask"], "cfg_scale": cfg,
                  "proportional_attn": True, "base_seqlen": (lumina_model["args"].image_size // 16) ** 2}
        bar = ProgressBar(steps)
        for i in range(steps):
            x = z.repeat(2, 1, 1, 1)
            velocity = model.forward_with_cfg(x, ts[i].expand(2), **kwargs)[:1]
            z = z + (ts[i + 1] - ts[i]) * velocity
            bar.update(1)
        return ({"samples": z.float() / 0.13025},)


NODE_CLASS_MAPPINGS = {
    "LuminaNextModelLoader": LuminaNextModelLoader,
    "LuminaGemmaEncode": LuminaGemmaEncode,
    "LuminaNextSampler": LuminaNextSampler,
}
