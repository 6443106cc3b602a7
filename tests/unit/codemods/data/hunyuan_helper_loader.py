# Shape modeled on: kijai/ComfyUI-HunyuanVideoWrapper (nodes.py: HyVideoModelLoader /
#   HyVideoSampler; hyvideo/text_encoder/__init__.py: load_text_encoder returns the model and
#   its path from a helper, `self.model, self.model_path = load_text_encoder(...)`).
# Written for qpatch's codemod corpus; no code is copied. Every load goes through a helper that
# returns what it loaded: `self.dit = self._load_dit(path, dtype)` (the helper does
# from_pretrained and returns the model), `self.llm, self.tokenizer = self._load_llm(path)`
# (a tuple), `self.clip = self._load_clip(path)`, `self.vae = self._load_vae(path)`. Nothing
# in the assignment names a model class. The denoising loop runs inside
# torch.inference_mode(False), where the helpers are called too.
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoTransformer3DModel,
)
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, LlamaModel

HY_DIR = os.path.join(folder_paths.models_dir, "diffusers", "HunyuanVideo")
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the content."
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)


class HunyuanVideoAllInOne:
    def __init__(self):
        self.dit = None
        self.llm = self.tokenizer = None
        self.clip = self.clip_tokenizer = None
        self.vae = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 720, "min": 64, "max": 1280, "step": 16}),
                "height": ("INT", {"default": 480, "min": 64, "max": 1280, "step": 16}),
                "num_frames": ("INT", {"default": 49, "min": 1, "max": 129, "step": 4}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 100}),
                "embedded_guidance": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 30.0}),
                "precision": (["bf16", "fp16"], {"default": "bf16"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "HunyuanVideo"

    def _load_dit(self, path, dtype):
        model = HunyuanVideoTransformer3DModel.from_pretrained(
            path, subfolder="transformer", torch_dtype=dtype
        )
        return model.eval()

    def _load_llm(self, path):
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", padding_side="right")
        llm = LlamaModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=torch.float16)
        llm.requires_grad_(False)
        return llm, tokenizer

    def _load_clip(self, path):
        self.clip_tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
        return CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder_2", torch_dtype=torch.float16
        )

    def _load_vae(self, path):
        vae = AutoencoderKLHunyuanVideo.from_pretrained(
            path, subfolder="vae", torch_dtype=torch.float16
        )
        vae.enable_tiling()
        return vae

    def _encode(self, prompt, device):
        ids = self.tokenizer(
            PROMPT_TEMPLATE.format(prompt),
            max_length=256,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).to(device)
        hidden = self.llm(
            input_ids=ids.input_ids, attention_mask=ids.attention_mask, output_hidden_states=True
        ).hidden_states[-3]
        clip_ids = self.clip_tokenizer(
            prompt, max_length=77, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        pooled = self.clip(clip_ids, output_hidden_states=False).pooler_output
        return hidden[:, 95:], ids.attention_mask[:, 95:], pooled

    def generate(
        self, prompt, width, height, num_frames, steps, embedded_guidance, precision, seed
    ):
        device = mm.get_torch_device()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.inference_mode(False):
            if self.dit is None:
                self.dit = self._load_dit(HY_DIR, dtype)
                self.llm, self.tokenizer = self._load_llm(HY_DIR)
                self.clip = self._load_clip(HY_DIR)
                self.vae = self._load_vae(HY_DIR)
            self.llm.to(device)
            self.clip.to(device)
            text, text_mask, pooled = self._encode(prompt, device)
            self.llm.to(mm.text_encoder_offload_device())
            self.dit.to(device)
            gen = torch.Generator("cpu").manual_seed(seed)
            shape = (1, 16, (num_frames - 1) // 4 + 1, height // 8, width // 8)
            latents = torch.randn(shape, generator=gen).to(device, dtype)
            scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
            scheduler.set_timesteps(steps, device=device)
            guidance = torch.tensor([embedded_guidance * 1000.0], device=device, dtype=dtype)
            bar = ProgressBar(steps)
            for t in scheduler.timesteps:
                noise_pred = self.dit(
                    hidden_states=latents,
                    timestep=t.expand(1),
                    encoder_hidden_states=text.to(dtype),
                    encoder_attention_mask=text_mask,
                    pooled_projections=pooled.to(dtype),
                    guidance=guidance,
                    return_dict=False,
                )[0]
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update(1)
            self.dit.to(mm.unet_offload_device())
            self.vae.to(device)
            video = self.vae.decode(
                latents.detach() / self.vae.config.scaling_factor, return_dict=False
            )[0]
        video = (video / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0)
        return (video.float().cpu(),)


NODE_CLASS_MAPPINGS = {"HunyuanVideoAllInOne": HunyuanVideoAllInOne}
