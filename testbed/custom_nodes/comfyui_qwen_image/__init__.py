"""Qwen-Image loader node (qpatch's test stand-in for the community comfyui_qwen_image)."""

from .qwen_image_loader import QwenImageLoader

NODE_CLASS_MAPPINGS = {"QwenImageLoader": QwenImageLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"QwenImageLoader": "Qwen-Image Loader"}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
