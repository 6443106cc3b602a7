"""Qwen-Image loader + sampler node: qpatch's test stand-in for the community node.

It is shaped like the community Qwen-Image loader that the widely shared "gradient
checkpointing" post edits by hand, because qpatch's codemods rewrite exactly this file:

- the load is one assignment, ``self.model = QwenImageModel.from_pretrained(...)``;
- the run calls ``output = self.model(input_ids, pixel_values, timestep)`` once per step;
- there is no ``IS_CHANGED`` (qpatch adds a correct one).

Like many community loaders it (re)loads its model every time it executes, so ComfyUI's
output cache is what spares a reload when a prompt repeats; every load prints
``[qwen_image] load #<n> <model_path> ...`` so tests can count reloads in the logs.

Like some community nodes it turns autograd back on inside ComfyUI's inference mode
(``autograd`` input, default on): that is the case where activations pile up and where
wrapping the model call in ``torch.utils.checkpoint`` saves memory. With ``autograd`` off
it runs as plain inference and checkpointing can save nothing. With ``chained`` on, each
step's latents are computed from the previous step's output without detaching, as real
samplers write ``latents = latents - k * noise_pred``: with autograd on, every step's graph
then stays alive until the node returns.

On a GPU a large enough workflow really runs out of memory. To reach the same path on a
CPU, the optional ``memory_budget_mb`` input caps what autograd may keep for a backward
pass (counted by a saved-tensors hook around each model call, so checkpointing, which
keeps only its inputs, stays under it): past the cap the node raises torch's own
``OutOfMemoryError``, its message naming the budget, as a GPU would raise it.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

try:
    from .qwen_image_model import QwenImageConfig, QwenImageModel
except ImportError:  # imported as a top-level module (scripts, tests)
    from qwen_image_model import QwenImageConfig, QwenImageModel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WEIGHT_SEED = 0  # weights are fixed per architecture; the `seed` input varies the inputs

_LOADS = 0  # loads in this process, printed and reported so tests can count reloads


def get_device() -> torch.device:
    """ComfyUI's device when running inside ComfyUI (honours --cpu, --cuda-device)."""
    try:
        import comfy.model_management as mm

        return mm.get_torch_device()
    except ImportError:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def models_root() -> Path:
    """``<ComfyUI>/models/qwen_image`` inside ComfyUI, else ``./qwen_image``."""
    try:
        import folder_paths

        return Path(folder_paths.models_dir) / "qwen_image"
    except ImportError:
        return Path.cwd() / "qwen_image"


def model_path_for(model_name: str, blocks: int, width: int, heads: int, dtype: str) -> Path:
    """Folder of one architecture's weights: ``<base>/<blocks>x<width>-h<heads>-<dtype>``,
    where base is model_name when absolute, else under models_root(). The architecture is
    part of the path so that a workflow of another size never loads mismatched weights."""
    base = Path(model_name)
    if not base.is_absolute():
        base = models_root() / base
    return base / f"{blocks}x{width}-h{heads}-{dtype}"


@contextlib.contextmanager
def autograd_mode(enabled: bool) -> Iterator[None]:
    """Turn autograd back on inside ComfyUI's torch.inference_mode(), as some community
    nodes do. Weights and inputs must be created in here too: tensors made in inference
    mode can never be saved for backward."""
    if not enabled:
        yield
        return
    with torch.inference_mode(False), torch.enable_grad():
        yield


class KeptForBackward:
    """Count the bytes autograd saves for a backward pass in one model call (new_step()
    starts a call); raise torch's OutOfMemoryError past `budget_mb` (0: no budget and no
    hook at all). A block, not a wrapper of the model call: the call keeps the shape the
    codemods and the blog post know."""

    def __init__(self, budget_mb: int) -> None:
        self.budget_mb = budget_mb
        self.kept = 0
        self._hooks = (
            torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            if budget_mb > 0
            else contextlib.nullcontext()
        )

    def __enter__(self) -> KeptForBackward:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def new_step(self) -> None:
        self.kept = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        size = t.numel() * t.element_size()
        self.kept += size
        if self.kept > self.budget_mb * 1024 * 1024:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {size} bytes (the stand-in's "
                f"memory_budget_mb={self.budget_mb}: autograd kept {self.kept / 2**20:.1f} MiB "
                "for a backward pass)"
            )
        return t


class QwenImageLoader:
    """Loads the Qwen-Image DiT and runs `steps` denoising steps on seeded inputs."""

    CATEGORY = "loaders/qwen_image"
    DESCRIPTION = "Qwen-Image loader and sampler (qpatch test stand-in)."
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple[Any, ...]]]:
        return {
            "required": {
                "model_name": ("STRING", {"default": "qwen-image-standin"}),
                "blocks": ("INT", {"default": 2, "min": 1, "max": 256}),
                "width": ("INT", {"default": 64, "min": 8, "max": 16384, "step": 8}),
                "heads": ("INT", {"default": 4, "min": 1, "max": 256}),
                "tokens": ("INT", {"default": 64, "min": 1, "max": 65536}),
                "text_tokens": ("INT", {"default": 16, "min": 1, "max": 8192}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
                "steps": ("INT", {"default": 2, "min": 1, "max": 1000}),
                "dtype": (list(DTYPES), {"default": "fp32"}),
                "autograd": ("BOOLEAN", {"default": True}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            },
            "optional": {
                "memory_budget_mb": ("INT", {"default": 0, "min": 0, "max": 1 << 30}),
                "chained": ("BOOLEAN", {"default": False}),
            },
        }

    def __init__(self) -> None:
        self.model: QwenImageModel | None = None
        self.device = get_device()

    def load(self, model_path: Path, dtype: torch.dtype) -> None:
        """Load the weights onto the device; counted and logged."""
        global _LOADS
        started = time.perf_counter()
        self.model = QwenImageModel.from_pretrained(model_path, torch_dtype=dtype)
        self.model.eval()
        self.model.to(self.device)
        _LOADS += 1
        params = sum(p.numel() for p in self.model.parameters())
        print(
            f"[qwen_image] load #{_LOADS} {model_path} params={params} dtype={dtype} "
            f"device={self.device} load_s={time.perf_counter() - started:.3f}",
            flush=True,
        )

    def run(
        self,
        model_name: str,
        blocks: int,
        width: int,
        heads: int,
        tokens: int,
        text_tokens: int,
        batch: int,
        steps: int,
        dtype: str,
        autograd: bool,
        seed: int,
        memory_budget_mb: int = 0,
        chained: bool = False,
    ) -> dict[str, Any]:
        """Load, run `steps` steps, and report to /history: peak memory covers the weights
        plus one step (outputs are dropped between steps), the checksum lets a patched run
        be compared with an unpatched one."""
        config = QwenImageConfig(blocks=blocks, width=width, heads=heads)
        torch_dtype = DTYPES[dtype]
        model_path = model_path_for(model_name, blocks, width, heads, dtype)
        cuda = self.device.type == "cuda"

        # Drop the previous model first, so a reload never holds two copies in VRAM.
        self.model = None
        with autograd_mode(autograd), KeptForBackward(memory_budget_mb) as budget:
            if not (model_path / "config.json").is_file():
                print(f"[qwen_image] creating seeded weights in {model_path}", flush=True)
                QwenImageModel.create_seeded(
                    model_path, config, WEIGHT_SEED, torch_dtype, self.device
                )
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            self.load(model_path, torch_dtype)

            gen = torch.Generator().manual_seed(seed)
            input_ids = torch.randint(0, config.vocab, (batch, text_tokens), generator=gen)
            pixel_values = torch.randn(batch, tokens, config.in_channels, generator=gen)
            input_ids = input_ids.to(self.device)
            pixel_values = pixel_values.to(self.device, torch_dtype)

            step_times: list[float] = []
            checksum = 0.0
            has_graph = False
            for i in range(steps):
                timestep = torch.full((batch,), 1.0 - i / steps, device=self.device)
                started = time.perf_counter()
                budget.new_step()
                output = self.model(input_ids, pixel_values, timestep)
                if cuda:
                    torch.cuda.synchronize(self.device)
                step_times.append(time.perf_counter() - started)
                checksum = float(output.detach().float().sum())
                has_graph = output.grad_fn is not None
                if chained:  # Euler step as real samplers write it: with autograd on, each
                    # step's graph stays reachable from the latents (what the patch must undo)
                    pixel_values = pixel_values - output / steps
                else:  # detached, so no step keeps the previous one's graph alive
                    pixel_values = (pixel_values - output.detach() / steps).detach()
                del output  # free this step's activations before the next step

        result = {
            "loads": _LOADS,
            "steps": steps,
            "step_time_s": statistics.median(step_times),
            "step_times_s": step_times,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None,
            "output_checksum": checksum,
            "output_has_grad_fn": has_graph,
            "device": str(self.device),
            "dtype": dtype,
            "autograd": autograd,
            "chained": chained,
            "model_path": os.fspath(model_path),
            "params": config.param_count(),
        }
        return {"ui": {"text": [json.dumps(result)]}}
