# Shape modeled on: comfyanonymous/ComfyUI (comfy_api/latest/_io.py: io.ComfyNode with
#   define_schema / execute / fingerprint_inputs; comfy_extras/nodes_train.py: a V3 node that
#   runs under torch.inference_mode(False)), and the ComfyExtension + comfy_entrypoint
#   registration used by V3 node packs.
# Written for qpatch's codemod corpus; no code is copied. V3 nodes have no INPUT_TYPES/FUNCTION
# of their own and no NODE_CLASS_MAPPINGS: they subclass io.ComfyNode, describe themselves in a
# classmethod define_schema, run in a classmethod execute, and V3's IS_CHANGED is spelled
# fingerprint_inputs. The DiT loader keeps its model on the class (there is no self); the
# sampler receives it through a custom "HUNYUAN_DIT" input and calls `transformer(...)` per
# step with autograd on; the LoRA loader has its own fingerprint_inputs.
import os

import torch
from typing_extensions import override

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import ComfyExtension, io
from diffusers import DDPMScheduler, HunyuanDiT2DModel

HunyuanDiT = io.Custom("HUNYUAN_DIT")


class HunyuanDiTLoaderV3(io.ComfyNode):
    _cache = {}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanDiTLoaderV3",
            display_name="HunyuanDiT Loader (diffusers)",
            category="HunyuanDiT",
            inputs=[
                io.String.Input("model_dir", default="HunyuanDiT-v1.2-Diffusers"),
                io.Combo.Input("dtype", options=["fp16", "bf16", "fp32"], default="fp16"),
            ],
            outputs=[HunyuanDiT.Output(display_name="transformer")],
        )

    @classmethod
    def execute(cls, model_dir, dtype) -> io.NodeOutput:
        path = model_dir if os.path.isabs(model_dir) else os.path.join(folder_paths.models_dir, "diffusers", model_dir)
        key = (path, dtype)
        if key not in cls._cache:
            torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
            with torch.inference_mode(False):
                cls._cache.clear()
                cls._cache[key] = HunyuanDiT2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch_dtype)
        return io.NodeOutput(cls._cache[key])


class HunyuanDiTLoraV3(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanDiTLoraV3",
            category="HunyuanDiT",
            inputs=[
                HunyuanDiT.Input("transformer"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras")),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05),
            ],
            outputs=[HunyuanDiT.Output(display_name="transformer")],
        )

    @classmethod
    def fingerprint_inputs(cls, transformer, lora_name, strength):
        path = folder_paths.get_full_path("loras", lora_name)
        return (lora_name, strength, os.path.getmtime(path) if path else None)

    @classmethod
    def execute(cls, transformer, lora_name, strength) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        with torch.inference_mode(False):
            transformer.load_lora_adapter(path, adapter_name="hydit_lora")
            transformer.set_adapters(["hydit_lora"], weights=[strength])
        return io.NodeOutput(transformer)


class HunyuanDiTSamplerV3(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanDiTSamplerV3",
            category="HunyuanDiT",
            inputs=[
                HunyuanDiT.Input("transformer"),
                io.Custom("HUNYUAN_DIT_EMBEDS").Input("embeds"),
                io.Int.Input("width", default=1024, min=512, max=2048, step=64),
                io.Int.Input("height", default=1024, min=512, max=2048, step=64),
                io.Int.Input("steps", default=50, min=1, max=200),
                io.Float.Input("cfg", default=6.0, min=1.0, max=20.0),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, transformer, embeds, width, height, steps, cfg, seed) -> io.NodeOutput:
        device = mm.get_torch_device()
        with torch.inference_mode(False):
            transformer.to(device)
            e = {k: v.to(device).clone() for k, v in embeds.items()}
            scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.018,
                                      prediction_type="v_prediction", steps_offset=1, clip_sample=False)
            scheduler.set_timesteps(steps, device=device)
            gen = torch.Generator(device).manual_seed(seed)
            latents = torch.randn(1, 4, height // 8, width // 8, generator=gen, device=device, dtype=transformer.dtype)
            image_meta = torch.tensor([[height, width, height, width, 0, 0]] * 2, device=device, dtype=latents.dtype)
            style = torch.zeros(2, dtype=torch.long, device=device)
            for t in scheduler.timesteps:
                model_in = torch.cat([latents] * 2)
                out = transformer(
                    model_in,
                    timestep=t.expand(2).to(latents.dtype),
                    encoder_hidden_states=e["clip"],
                    text_embedding_mask=e["clip_mask"],
                    encoder_hidden_states_t5=e["t5"],
                    text_embedding_mask_t5=e["t5_mask"],
                    image_meta_size=image_meta,
                    style=style,
                    image_rotary_emb=e["rope"],
                    return_dict=False,
                )[0]
                uncond, cond = out.chunk(2)
                uncond, cond = uncond[:, :4], cond[:, :4]
                latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents, return_dict=False)[0]
                latents = latents.detach()
        return io.NodeOutput({"samples": latents.float().cpu() / 0.13025})


class HunyuanDiTExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [HunyuanDiTLoaderV3, HunyuanDiTLoraV3, HunyuanDiTSamplerV3]


async def comfy_entrypoint() -> HunyuanDiTExtension:
    return HunyuanDiTExtension()
