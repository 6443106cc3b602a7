# Shape modeled on: kijai/ComfyUI-DiffusersStableCascade (nodes.py: self.prior / self.decoder
#   pipelines created on first run and called in the same node).
# Written for qpatch's codemod corpus; no code is copied. Stable Cascade is two diffusers
# pipelines: the prior (stage C) makes image embeddings from the prompt, the decoder (stages B
# and A) turns them into pixels. Both are created lazily with from_pretrained and stored on the
# node as `self.prior` and `self.decoder`, and both are called as pipelines. The prior's
# UNet-like `self.prior.prior` is a diffusion model, but nothing calls it directly here, and
# nothing in the file turns autograd back on.
import torch
from torchvision.transforms.functional import to_tensor

import comfy.model_management as mm
from diffusers import StableCascadeDecoderPipeline, StableCascadePriorPipeline

PRIOR_REPO = "stabilityai/stable-cascade-prior"
DECODER_REPO = "stabilityai/stable-cascade"


class StableCascadeDiffusers:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "width": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 128}),
                "height": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 128}),
                "prior_steps": ("INT", {"default": 20, "min": 1, "max": 200}),
                "decoder_steps": ("INT", {"default": 10, "min": 1, "max": 200}),
                "guidance_scale": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "cpu_offload": ("BOOLEAN", {"default": False}),
            },
            "optional": {"image": ("IMAGE",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "process"
    CATEGORY = "StableCascade"

    def _pipelines(self, device, cpu_offload):
        if getattr(self, "prior", None) is None:
            self.prior = StableCascadePriorPipeline.from_pretrained(PRIOR_REPO, variant="bf16", torch_dtype=torch.bfloat16)
            self.decoder = StableCascadeDecoderPipeline.from_pretrained(DECODER_REPO, variant="bf16", torch_dtype=torch.float16)
            if cpu_offload:
                self.prior.enable_model_cpu_offload()
                self.decoder.enable_model_cpu_offload()
            else:
                self.prior.to(device)
                self.decoder.to(device)

    def process(self, prompt, negative_prompt, width, height, prior_steps, decoder_steps,
                guidance_scale, batch_size, seed, cpu_offload, image=None):
        mm.unload_all_models()
        device = mm.get_torch_device()
        self._pipelines(device, cpu_offload)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        prior_output = self.prior(
            image=image,
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            guidance_scale=guidance_scale,
            num_images_per_prompt=batch_size,
            num_inference_steps=prior_steps,
            generator=generator,
        )
        images = self.decoder(
            image_embeddings=prior_output.image_embeddings.to(torch.float16),
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=0.0,
            num_inference_steps=decoder_steps,
            output_type="pil",
            generator=generator,
        ).images
        batch = torch.stack([to_tensor(img) for img in images]).permute(0, 2, 3, 1).cpu()
        return (batch,)


NODE_CLASS_MAPPINGS = {"StableCascadeDiffusers": StableCascadeDiffusers}
