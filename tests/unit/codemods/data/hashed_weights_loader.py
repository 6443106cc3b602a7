# Shape modeled on: comfyanonymous/ComfyUI (nodes.py: LoadImage.IS_CHANGED returns a sha256 of
#   the file; UNETLoader / CLIPLoader load through comfy.sd), city96/ComfyUI-GGUF (nodes.py:
#   UnetLoaderGGUF.hash_file, a cached sha256 of the weight file).
# Written for qpatch's codemod corpus; no code is copied. The DiT loader has an author-written
# IS_CHANGED with real logic: the sha256 of the weight file it loads (cached per path, size and
# mtime, so a 40 GB file is not re-read every prompt), so a re-downloaded or converted file
# reloads and an unchanged one does not. The text-encoder loader next to it has none. Both load
# through ComfyUI's own comfy.sd functions and return ComfyUI's MODEL / CLIP objects.
import hashlib
import os
from functools import lru_cache

import comfy.sd
import folder_paths


@lru_cache(maxsize=32)
def _sha256(path, size, mtime_ns):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path):
    st = os.stat(path)
    return _sha256(path, st.st_size, st.st_mtime_ns)


class QwenImageDiTLoaderHashed:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "unet_name": (folder_paths.get_filename_list("diffusion_models"),),
                "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e5m2"],),
            }
        }

    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "sha256")
    FUNCTION = "load"
    CATEGORY = "QwenImage/loaders"

    @classmethod
    def IS_CHANGED(cls, unet_name, weight_dtype):
        path = folder_paths.get_full_path("diffusion_models", unet_name)
        if path is None:
            return unet_name  # VALIDATE_INPUTS reports the missing file
        return f"{file_sha256(path)}:{weight_dtype}"

    def load(self, unet_name, weight_dtype):
        import torch

        options = {}
        if weight_dtype == "fp8_e4m3fn":
            options["dtype"] = torch.float8_e4m3fn
        elif weight_dtype == "fp8_e5m2":
            options["dtype"] = torch.float8_e5m2
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        model = comfy.sd.load_diffusion_model(path, model_options=options)
        return (model, file_sha256(path))


class QwenImageTextEncoderLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_name": (folder_paths.get_filename_list("text_encoders"),),
                "device": (["default", "cpu"], {"advanced": True}),
            }
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "QwenImage/loaders"

    def load(self, clip_name, device="default"):
        import torch

        options = {}
        if device == "cpu":
            options["load_device"] = options["offload_device"] = torch.device("cpu")
        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        clip = comfy.sd.load_clip(
            ckpt_paths=[path],
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            clip_type=comfy.sd.CLIPType.QWEN_IMAGE,
            model_options=options,
        )
        return (clip,)


class QwenImageEmptyLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 1328, "min": 16, "max": 4096, "step": 16}),
                             "height": ("INT", {"default": 1328, "min": 16, "max": 4096, "step": 16}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "QwenImage/latent"

    def generate(self, width, height, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, 1, height // 8, width // 8])},)


NODE_CLASS_MAPPINGS = {
    "QwenImageDiTLoaderHashed": QwenImageDiTLoaderHashed,
    "QwenImageTextEncoderLoader": QwenImageTextEncoderLoader,
    "QwenImageEmptyLatent": QwenImageEmptyLatent,
}
