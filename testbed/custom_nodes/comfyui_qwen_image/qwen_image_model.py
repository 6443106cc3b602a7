"""A small DiT standing in for Qwen-Image's diffusion transformer (qpatch's test bed).

It has the shape that matters for memory: a stack of pre-norm joint-attention blocks over
text tokens and image tokens together, so the activations autograd keeps grow with
blocks x batch x tokens x width exactly as a real MMDiT's do. Sized 40 blocks x width 3072
in bf16 it holds 8.44 GiB of weights, our reference measurement.

Only stdlib + torch, and no relative imports: scripts/bench_vram.py and the unit tests
import this file on its own, without ComfyUI. No `from __future__ import annotations`: with
it the dataclass below needs its module in sys.modules, which a bare
spec_from_file_location + exec_module (as a script may do) does not provide.
"""

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.pt"


@dataclass(frozen=True)
class QwenImageConfig:
    """Architecture of the stand-in; written to config.json next to the weights."""

    blocks: int = 2
    width: int = 64
    heads: int = 4
    vocab: int = 1024
    in_channels: int = 64  # Qwen-Image latents: 16 channels x 2x2 patches per token

    def __post_init__(self) -> None:
        if min(self.blocks, self.width, self.heads, self.vocab, self.in_channels) < 1:
            raise ValueError(f"every size must be >= 1: {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    def param_count(self) -> int:
        """Exact number of parameters: 12·w² (+13·w biases and norms) per block, plus the
        text embedding, the image in/out projections and the final norm."""
        w, c = self.width, self.in_channels
        per_block = 12 * w * w + 13 * w
        return self.blocks * per_block + self.vocab * w + (c * w + w) + 2 * w + (w * c + c)


class JointBlock(nn.Module):
    """Pre-norm joint self-attention over [text; image] tokens, then a 4x GELU MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + self.proj(attn)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


def timestep_embedding(timestep: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal embedding (no parameters, so the weight count stays 12·w² per block)."""
    half = width // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    )
    args = timestep.float()[:, None] * 1000.0 * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, width - 2 * half))


class QwenImageModel(nn.Module):
    """Text embedding + image patch projection -> joint blocks -> image tokens out."""

    def __init__(self, config: QwenImageConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.text_embed = nn.Embedding(config.vocab, w)
        self.img_in = nn.Linear(config.in_channels, w)
        self.blocks = nn.ModuleList(JointBlock(w, config.heads) for _ in range(config.blocks))
        self.norm_out = nn.LayerNorm(w)
        self.img_out = nn.Linear(w, config.in_channels)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        timestep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) int64, pixel_values (B, N, in_channels), timestep (B,) in [0, 1];
        returns (B, N, in_channels), the prediction for the image tokens."""
        txt = self.text_embed(input_ids)
        img = self.img_in(pixel_values)
        x = torch.cat([txt, img], dim=1)
        if timestep is not None:
            x = x + timestep_embedding(timestep, self.config.width)[:, None, :].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.img_out(self.norm_out(x[:, input_ids.shape[1] :]))

    # -- persistence -------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write config.json + model.pt into `path`, atomically: files go to a temporary
        sibling folder that is renamed into place, so a killed save never leaves a
        half-written model that a later load would trust."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save({k: v.detach() for k, v in self.state_dict().items()}, tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same model first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not (path / CONFIG_NAME).is_file():
                raise
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "QwenImageModel":
        """Read a model written by save_pretrained. The weights are memory-mapped and
        assigned into a module built on the meta device, so nothing is initialised twice
        and an 8 GiB model does not pass through a second copy in RAM."""
        path = Path(path)
        config = QwenImageConfig(**json.loads((path / CONFIG_NAME).read_text()))
        state = torch.load(path / WEIGHTS_NAME, map_location="cpu", mmap=True, weights_only=True)
        state = {k: v.to(device=device, dtype=torch_dtype) for k, v in state.items()}
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, assign=True)
        return model

    @classmethod
    def create_seeded(
        cls,
        path: str | os.PathLike[str] | None,
        config: QwenImageConfig,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "QwenImageModel":
        """Build deterministic weights (same seed, dtype and device type -> same bits) and
        save them to `path` unless it is None. Tensors are drawn directly on `device` in
        `dtype`, so an 8.4 GiB bf16 model takes seconds on a GPU, not minutes on a CPU.

        Init: N(0, 1/fan_in) for projections, residual outputs further scaled by
        1/sqrt(2·blocks) (GPT-2 style) so 40+ blocks stay finite in bf16; N(0, 1) for the
        text embedding; ones/zeros for norms and biases."""
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.device("meta"):
            model = cls(config)
        residual_scale = 1.0 / math.sqrt(2 * config.blocks)
        state: dict[str, torch.Tensor] = {}
        for name, meta in model.state_dict().items():
            t = torch.empty(meta.shape, dtype=dtype, device=device)
            if ".norm" in name or name.startswith("norm"):
                t.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                t.zero_()
            elif name == "text_embed.weight":
                t.normal_(0.0, 1.0, generator=generator)
            else:
                std = 1.0 / math.sqrt(meta.shape[1])
                if name.endswith(("proj.weight", "fc2.weight")):
                    std *= residual_scale
                t.normal_(0.0, std, generator=generator)
            state[name] = t
        model.load_state_dict(state, assign=True)
        if path is not None:
            model.save_pretrained(path)
        return model
