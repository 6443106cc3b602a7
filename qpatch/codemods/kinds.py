"""What a loaded object is, from the name of its class or of the ComfyUI type it arrives as.

Checkpointing saves memory only around the diffusion model (the DiT/UNet that runs once per
step): a diffusers pipeline's `__call__` runs under `torch.no_grad()`, a text encoder runs
once per prompt, a tokenizer holds no tensors. Node files name their objects loosely
(`self.model` is a DiT in one class and a ChatGLM in the next), so the class a load names is
the evidence, read by the rules below in order: the first that matches decides.
"""

from __future__ import annotations

import enum
import re


class Kind(enum.Enum):
    DIFFUSION = "diffusion model"
    PIPELINE = "pipeline"
    TEXT_ENCODER = "text encoder"
    VAE = "VAE"
    NOT_A_MODEL = "not a model"  # tokenizers, processors, schedulers, configs
    PATCHER = "ComfyUI model patcher"  # a MODEL input: its .model.diffusion_model is the DiT
    AMBIGUOUS = "a name bound to models of several kinds"
    UNKNOWN = "model of unknown kind"

    @property
    def reason(self) -> str:
        """The report's machine-readable code for a call left alone because of its kind."""
        return self.name.lower().replace("_", "-")


def _words(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# Class-name rules, first match wins. Each pattern is searched in the class's last dotted
# part, so `diffusers.QwenImagePipeline` and `QwenImagePipeline` read the same.
_CLASS_RULES: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    # DiffusionPipeline, AutoPipelineForText2Image, QwenImagePipeline, StableCascadePriorPipeline
    (Kind.PIPELINE, _words(r"Pipeline", r"^AutoPipeline")),
    (
        Kind.NOT_A_MODEL,
        _words(r"Tokenizer", r"Processor$", r"FeatureExtractor$", r"Scheduler$", r"Config$"),
    ),
    (Kind.VAE, _words(r"^Autoencoder", r"VAE", r"Vae(?:[A-Z_]|$)", r"VQModel$")),
    (
        Kind.TEXT_ENCODER,
        _words(
            r"TextModel",  # CLIPTextModel(WithProjection), ChatGLM's text models
            r"TextEncoder",
            r"EncoderModel$",  # T5EncoderModel, UMT5EncoderModel
            r"For(?:CausalLM|ConditionalGeneration|Seq2SeqLM|MaskedLM)$",
            r"^ChatGLM",
            r"^Qwen2(?:_5)?_?VL",
            r"^Gemma",
            r"^Llama",
            r"^(?:Bert|XLMRoberta|Roberta|MT5|T5|UMT5)Model$",
        ),
    ),
    (
        Kind.DIFFUSION,
        _words(
            r"Transformer[23]DModel",
            r"UNet",
            r"Unet",
            r"DiT",
            r"Dit(?:[A-Z_]|$)",
            r"Denoiser",
            r"DiffusionModel",
            r"Prior$",  # Würstchen / Stable Cascade prior
            # Families whose own model classes are DiTs (QwenImageModel, WanModel, ...).
            r"^(?:QwenImage|Wan|HunyuanVideo|Hunyuan|CogVideoX|Lumina|Flux|SD3|PixArt|Sana)",
            r"^(?:HiDream|Chroma|LTXV?|Mochi|Cosmos|AuraFlow|OmniGen|Kolors|StableCascade)",
        ),
    ),
)

# ComfyUI socket types a node receives an object as. `MODEL` is ComfyUI's ModelPatcher: not
# called itself (comfy.sample samples it), but `model.model.diffusion_model` is its DiT.
_INPUT_RULES: tuple[tuple[Kind, re.Pattern[str]], ...] = (
    (Kind.PIPELINE, _words(r"PIPE(?:LINE)?")),
    (Kind.VAE, _words(r"VAE")),
    (Kind.TEXT_ENCODER, _words(r"CLIP", r"T5", r"TEXT", r"ENCODER", r"LLM", r"GLM")),
    (Kind.PATCHER, _words(r"^MODEL$")),
    (
        Kind.NOT_A_MODEL,
        _words(
            r"UPSCALE",
            r"TOKENIZER",
            r"SCHEDULER",
            r"CONFIG",
            r"LATENT",
            r"IMAGE",
            r"EMBED",
            r"CONDITIONING",
            r"MASK",
            r"SAM",
            r"DEPTH",
            r"ESRGAN",
            r"STYLE",
            r"LORA",
            r"FLORENCE",
            r"AUDIO",
            r"CONTROL",
            r"IPADAPTER",
            r"VISION",
        ),
    ),
    (
        Kind.DIFFUSION,
        _words(
            r"(?:^|_)(?:DIT|TRANSFORMER|UNET|DENOISER|DIFFUSION_MODEL)(?:_|$)",
            # a node pack's own model type, named after a DiT family
            r"^(?:WAN|HY|HUNYUAN|COG|LTX|MOCHI|QWEN|FLUX|SANA|LUMINA|PIXART|HIDREAM)\w*MODEL$",
        ),
    ),
)

# Attributes of a pipeline (diffusers' component names) that hold its parts.
_PIPELINE_PARTS: dict[str, Kind] = {
    "transformer": Kind.DIFFUSION,
    "transformer_2": Kind.DIFFUSION,
    "unet": Kind.DIFFUSION,
    "prior": Kind.DIFFUSION,
    "decoder": Kind.DIFFUSION,
    "vae": Kind.VAE,
    "text_encoder": Kind.TEXT_ENCODER,
    "text_encoder_2": Kind.TEXT_ENCODER,
    "text_encoder_3": Kind.TEXT_ENCODER,
    "tokenizer": Kind.NOT_A_MODEL,
    "tokenizer_2": Kind.NOT_A_MODEL,
    "scheduler": Kind.NOT_A_MODEL,
}


def _first_match(name: str, rules: tuple[tuple[Kind, re.Pattern[str]], ...]) -> Kind:
    return next((kind for kind, rule in rules if rule.search(name)), Kind.UNKNOWN)


def kind_of_class(dotted: str) -> Kind:
    """The kind of an instance of the class `dotted` (e.g. `diffusers.QwenImagePipeline`)."""
    return _first_match(dotted.rsplit(".", 1)[-1], _CLASS_RULES)


def kind_of_input_type(type_name: str) -> Kind:
    """The kind of an object a node receives as the ComfyUI type `type_name`."""
    return _first_match(type_name.upper(), _INPUT_RULES)


# Attributes of a wrapper around a DiT (a node pack's model object, a ModelPatcher, a
# compiled module) that still hold the DiT.
_WRAPPED_DIT = frozenset(
    {"model", "diffusion_model", "inner_model", "transformer", "unet", "dit", "_orig_mod"}
)


def kind_of_part(holder: Kind, attribute: str) -> Kind | None:
    """The kind of `x.<attribute>` for an `x` of kind `holder`; None when it is nothing known
    (a method, a config value)."""
    if holder is Kind.PIPELINE:
        return _PIPELINE_PARTS.get(attribute)
    if holder is Kind.PATCHER:
        return {"model": Kind.PATCHER, "diffusion_model": Kind.DIFFUSION}.get(attribute)
    if holder is Kind.DIFFUSION and attribute in _WRAPPED_DIT:
        return Kind.DIFFUSION
    return None


def names_a_kind(word: str) -> bool:
    """Whether `word` could be a class a load names: CamelCase and of a kind we know."""
    return word[:1].isupper() and not word.isupper() and kind_of_class(word) is not Kind.UNKNOWN
