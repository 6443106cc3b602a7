# Shape modeled on: kijai/ComfyUI-KwaiKolorsWrapper (nodes.py: ChatGLM3 loader, KolorsTextEncode,
#   KolorsSampler), MinusZoneAI/ComfyUI-Kolors-MZ (ChatGLM3 text encoder node).
# Written for qpatch's codemod corpus; no code is copied. Two node classes in one file each keep
# their model in an attribute spelled `self.model`: in KolorsChatGLM3Encode it is the ChatGLM3
# text encoder, in KolorsUNetSampler the SDXL-style UNet. Only the UNet's call is a diffusion
# model call, and only it runs with autograd on (the sampler leaves inference mode so that the
# IP-adapter patches can write into the attention processors).
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

from .kolors.models.modeling_chatglm import ChatGLMModel
from .kolors.models.tokenization_chatglm import ChatGLMTokenizer

KOLORS_DIR = os.path.join(folder_paths.models_dir, "diffusers", "Kolors")


class KolorsChatGLM3Encode:
    def __init__(self):
        self.model = None
        self.tokenizer = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "precision": (["fp16", "quant8", "quant4"], {"default": "fp16"}),
            }
        }

    RETURN_TYPES = ("KOLORS_EMBEDS",)
    FUNCTION = "encode"
    CATEGORY = "Kolors"

    def _embed(self, texts, device):
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=256, truncation=True, return_tensors="pt"
        ).to(device)
        output = self.model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            position_ids=tokens["position_ids"],
            output_hidden_states=True,
        )
        hidden = output.hidden_states[-2].permute(1, 0, 2).clone()
        pooled = output.hidden_states[-1][-1, :, :].clone()
        return hidden, pooled

    def encode(self, prompt, negative_prompt, precision):
        device = mm.get_torch_device()
        if self.model is None:
            path = os.path.join(KOLORS_DIR, "text_encoder")
            self.tokenizer = ChatGLMTokenizer.from_pretrained(path)
            self.model = ChatGLMModel.from_pretrained(path, torch_dtype=torch.float16)
            if precision != "fp16":
                self.model.quantize(8 if precision == "quant8" else 4)
        self.model.to(device)
        cond, pooled = self._embed([prompt], device)
        uncond, uncond_pooled = self._embed([negative_prompt], device)
        self.model.to(mm.text_encoder_offload_device())
        return ({"cond": cond, "pooled": pooled, "uncond": uncond, "uncond_pooled": uncond_pooled},)


class KolorsUNetSampler:
    def __init__(self):
        self.model = None
        self.scheduler = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "kolors_embeds": ("KOLORS_EMBEDS",),
                "width": ("INT", {"default": 1024, "min": 512, "max": 2048, "step": 64}),
                "height": ("INT", {"default": 1024, "min": 512, "max": 2048, "step": 64}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200}),
                "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 20.0}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "Kolors"

    def sample(self, kolors_embeds, width, height, steps, cfg, seed):
        device = mm.get_torch_device()
        with torch.inference_mode(False), torch.enable_grad():
            if self.model is None:
                self.model = UNet2DConditionModel.from_pretrained(
                    KOLORS_DIR, subfolder="unet", variant="fp16", torch_dtype=torch.float16
                )
                self.scheduler = EulerDiscreteScheduler.from_pretrained(
                    KOLORS_DIR, subfolder="scheduler"
                )
            self.model.to(device)
            embeds = torch.cat([kolors_embeds["uncond"], kolors_embeds["cond"]]).to(device).clone()
            pooled = (
                torch.cat([kolors_embeds["uncond_pooled"], kolors_embeds["pooled"]])
                .to(device)
                .clone()
            )
            time_ids = torch.tensor(
                [[height, width, 0, 0, height, width]] * 2, device=device, dtype=embeds.dtype
            )
            generator = torch.Generator(device).manual_seed(seed)
            latents = torch.randn(
                (1, 4, height // 8, width // 8), generator=generator, device=device
            )
            self.scheduler.set_timesteps(steps, device=device)
            latents = latents * self.scheduler.init_noise_sigma
            bar = ProgressBar(steps)
            for t in self.scheduler.timesteps:
                latent_in = self.scheduler.scale_model_input(torch.cat([latents] * 2), t).half()
                noise_pred = self.model(
                    latent_in,
                    t,
                    encoder_hidden_states=embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                    return_dict=False,
                )[0]
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + cfg * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update(1)
        self.model.to(mm.unet_offload_device())
        return ({"samples": latents.detach().float() / 0.13025},)


NODE_CLASS_MAPPINGS = {
    "KolorsChatGLM3Encode": KolorsChatGLM3Encode,
    "KolorsUNetSampler": KolorsUNetSampler,
}
