# Shape modeled on: comfyanonymous/ComfyUI (comfy_extras/nodes_train.py: TrainLoraNode runs its
#   loop under torch.inference_mode(False), loss.backward(), optimizer.step()),
#   kijai/ComfyUI-FluxTrainer (nodes.py: training inside ComfyUI nodes),
#   huggingface/diffusers (examples/dreambooth/train_dreambooth_lora_flux.py: peft LoRA on the
#   Flux transformer, frozen text encoders and VAE).
# Written for qpatch's codemod corpus; no code is copied. This node trains on purpose: it loads a
# Flux DiT, freezes it, adds LoRA layers with peft, and fits them to a few images with
# loss.backward() and an AdamW optimizer. Gradients are the point here, so autograd must stay on;
# checkpointing the DiT call is the only memory fix. The text encoders and the VAE run under
# torch.no_grad() and are never trained.
import os

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

import comfy.model_management as mm
import folder_paths
from comfy.utils import ProgressBar
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

FLUX_DIR = os.path.join(folder_paths.models_dir, "diffusers", "FLUX.1-dev")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def pack_latents(x):
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


class FluxLoRAFit:
    def __init__(self):
        self.transformer = None

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "caption": ("STRING", {"multiline": True, "default": "a photo of sks dog"}),
                "steps": ("INT", {"default": 500, "min": 1, "max": 20000}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-2, "step": 1e-6}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 128}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "output_name": ("STRING", {"default": "flux_lora_fit"}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_path",)
    FUNCTION = "fit"
    CATEGORY = "training"
    OUTPUT_NODE = True

    def fit(self, images, caption, steps, learning_rate, rank, seed, output_name):
        device = mm.get_torch_device()
        mm.unload_all_models()
        torch.manual_seed(seed)
        with torch.inference_mode(False), torch.enable_grad():
            self.transformer = FluxTransformer2DModel.from_pretrained(FLUX_DIR, subfolder="transformer", torch_dtype=torch.bfloat16)
            self.vae = AutoencoderKL.from_pretrained(FLUX_DIR, subfolder="vae", torch_dtype=torch.bfloat16).to(device)
            self.text_encoder = CLIPTextModel.from_pretrained(FLUX_DIR, subfolder="text_encoder").to(device)
            self.text_encoder_2 = T5EncoderModel.from_pretrained(FLUX_DIR, subfolder="text_encoder_2", torch_dtype=torch.bfloat16).to(device)
            self.tokenizer = CLIPTokenizer.from_pretrained(FLUX_DIR, subfolder="tokenizer")
            self.tokenizer_2 = T5TokenizerFast.from_pretrained(FLUX_DIR, subfolder="tokenizer_2")

            with torch.no_grad():
                clip_ids = self.tokenizer(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
                pooled = self.text_encoder(clip_ids.to(device), output_hidden_states=False).pooler_output.to(torch.bfloat16)
                t5_ids = self.tokenizer_2(caption, padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
                prompt_embeds = self.text_encoder_2(t5_ids.to(device))[0]
                pixels = images.movedim(-1, 1).to(device, torch.bfloat16).clone() * 2.0 - 1.0
                latents = self.vae.encode(pixels).latent_dist.sample()
                latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
            self.text_encoder.to("cpu")
            self.text_encoder_2.to("cpu")
            self.vae.to("cpu")

            self.transformer.requires_grad_(False)
            self.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
            self.transformer.to(device)
            self.transformer.train()
            params = [p for p in self.transformer.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-4)

            b, _, h, w = latents.shape
            packed = pack_latents(latents)
            img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
            img_ids[..., 1] += torch.arange(h // 2, device=device)[:, None]
            img_ids[..., 2] += torch.arange(w // 2, device=device)[None, :]
            img_ids = img_ids.reshape(-1, 3)
            txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device)
            guidance = torch.full((b,), 1.0, device=device)
            bar = ProgressBar(steps)
            for step in range(steps):
                noise = torch.randn_like(packed)
                sigma = torch.sigmoid(torch.randn(b, device=device)).to(packed.dtype)
                noisy = (1.0 - sigma[:, None, None]) * packed + sigma[:, None, None] * noise
                pred = self.transformer(
                    hidden_states=noisy,
                    timestep=sigma,
                    guidance=guidance,
                    pooled_projections=pooled.expand(b, -1),
                    encoder_hidden_states=prompt_embeds.expand(b, -1, -1),
                    txt_ids=txt_ids,
                    img_ids=img_ids,
                    return_dict=False,
                )[0]
                loss = F.mse_loss(pred.float(), (noise - packed).float())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)

            lora_sd = get_peft_model_state_dict(self.transformer)
        out_dir = os.path.join(folder_paths.get_output_directory(), "loras")
        os.makedirs(out_dir, exist_ok=True)
        out_path = os.path.join(out_dir, f"{output_name}_r{rank}_{steps}steps.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in lora_sd.items()}, out_path)
        self.transformer = None
        mm.soft_empty_cache()
        return {"ui": {"text": [out_path]}, "result": (out_path,)}


NODE_CLASS_MAPPINGS = {"FluxLoRAFit": FluxLoRAFit}
