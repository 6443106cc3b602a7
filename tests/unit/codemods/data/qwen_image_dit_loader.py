# Shape modeled on: siliconflow/QwenImage-ComfyUI (__init__.py: Qwen-Image components loaded in a
#   node), musyra/ComfyUI_RH_Qwen-Image (model_loader.py), huggingface/diffusers
#   (QwenImagePipeline's denoising loop: QwenImageTransformer2DModel called with img_shapes and
#   txt_seq_lens, FlowMatchEulerDiscreteScheduler.step). The widely shared gradient-checkpointing
#   post edits a loader of this shape by hand.
# Written for qpatch's codemod corpus; no code is copied. The load is one assignment,
# `self.model = QwenImageTransformer2DModel.from_pretrained(...)`, next to the Qwen2.5-VL text
# encoder, its tokenizer, the Qwen-Image VAE and the scheduler. `run` turns autograd back on for
# everything (load included, so the weights are ordinary tensors) and calls `self.model(...)`
# once per step; the text encoder is called in the same block. There is no IS_CHANGED.
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
DROP = 34  # template tokens in front of the prompt


class QwenImageDiTLoader:
    CATEGORY = "loaders/qwen_image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": ("STRING", {"default": "Qwen-Image-2512"}),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 1328, "min": 256, "max": 2048, "step": 16}),
                "height": ("INT", {"default": 1328, "min": 256, "max": 2048, "step": 16}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 100}),
                "dtype": (list(DTYPES), {"default": "bf16"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            }
        }

    def __init__(self):
        self.model = None
        self.device = mm.get_torch_device()

    def load(self, model_path, dtype):
        self.model = QwenImageTransformer2DModel.from_pretrained(model_path, subfolder="transformer", torch_dtype=dtype)
        self.model.eval()
        self.model.to(self.device)
        self.text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_path, subfolder="text_encoder", torch_dtype=dtype
        ).to(self.device)
        self.tokenizer = Qwen2Tokenizer.from_pretrained(model_path, subfolder="tokenizer")
        self.vae = AutoencoderKLQwenImage.from_pretrained(model_path, subfolder="vae", torch_dtype=dtype).to(self.device)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_path, subfolder="scheduler")

    def run(self, model_name, prompt, width, height, steps, dtype, seed):
        model_path = os.path.join(folder_paths.models_dir, "diffusers", model_name)
        torch_dtype = DTYPES[dtype]
        self.model = None  # never two copies in VRAM
        with torch.inference_mode(False), torch.enable_grad():
            self.load(model_path, torch_dtype)
            tokens = self.tokenizer([TEMPLATE.format(prompt)], padding=True, return_tensors="pt").to(self.device)
            out = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True)
            prompt_embeds = out.hidden_states[-1][:, DROP:]
            prompt_mask = tokens.attention_mask[:, DROP:]

            lat_h, lat_w = height // 16, width // 16
            gen = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn(1, lat_h * lat_w, 64, generator=gen).to(self.device, torch_dtype)
            self.scheduler.set_timesteps(steps, device=self.device, mu=1.0)
            img_shapes = [[(1, lat_h, lat_w)]]
            txt_seq_lens = prompt_mask.sum(dim=1).tolist()
            bar = ProgressBar(steps)
            for t in self.scheduler.timesteps:
                timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000
                noise_pred = self.model(
                    hidden_states=latents,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    encoder_hidden_states_mask=prompt_mask,
                    img_shapes=img_shapes,
                    txt_seq_lens=txt_seq_lens,
                    return_dict=False,
                )[0]
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                bar.update(1)

            z = latents.view(1, lat_h, lat_w, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 1, lat_h * 2, lat_w * 2)
            mean = torch.tensor(self.vae.config.latents_mean, device=self.device).view(1, 16, 1, 1, 1)
            std = torch.tensor(self.vae.config.latents_std, device=self.device).view(1, 16, 1, 1, 1)
            image = self.vae.decode((z * std + mean).to(torch_dtype), return_dict=False)[0][:, :, 0]
        image = ((image.detach().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()
        return (image,)


NODE_CLASS_MAPPINGS = {"QwenImageDiTLoader": QwenImageDiTLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"QwenImageDiTLoader": "Qwen-Image DiT Loader + Sampler"}
