#!/usr/bin/env python3
"""VRAM and step time of the Qwen-Image stand-in under each execution mode, without ComfyUI.

Why: the post's claim is that wrapping the model call in torch.utils.checkpoint saves VRAM.
That holds only where autograd keeps activations; inside ComfyUI's inference mode there is
nothing to save. This bench shows both cases side by side, with the allocator settings the
post recommends, so a patch's measured effect in ComfyUI can be read against a floor.

Every (allocator config, mode) runs in its own child process: PYTORCH_CUDA_ALLOC_CONF is
read once, when CUDA initialises, and a fresh process also gives NVML a clean per-process
figure. Weights are drawn on the device from a seed (seconds for 8.4 GiB), never read from
disk. On CPU the memory columns say "not measured"; step times are still measured.

    scripts/bench_vram.py                      # CUDA: reference size; CPU: tiny
    scripts/bench_vram.py --modes autograd,checkpoint --alloc-confs unset --steps 3
    scripts/bench_vram.py --json > bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_FILE = REPO / "testbed" / "custom_nodes" / "comfyui_qwen_image" / "qwen_image_model.py"
RESULT_MARK = "BENCH_RESULT "
GIB = 1024**3

MODES = (
    "autograd",
    "checkpoint",
    "block-checkpoint",
    "no_grad",
    "inference_mode",
    "inference_mode+checkpoint",
)
MODE_HELP = {
    "autograd": "autograd on, plain forward",
    "checkpoint": "autograd on, whole-model checkpoint (the post's patch)",
    "block-checkpoint": "autograd on, per-block checkpoint",
    "no_grad": "torch.no_grad()",
    "inference_mode": "torch.inference_mode() (ComfyUI's own mode)",
    "inference_mode+checkpoint": "inference_mode + whole-model checkpoint",
}
UNSET = "unset"
ALLOC_CONFS = (UNSET, "max_split_size_mb:128", "expandable_segments:True")

#: The H100 reference (issue 5; docs/design.md, "Measurement"): 40 x 3072, 24 heads, bf16,
#: 8.44 GiB; batch 2 x (4096 image + 256 text = 4352 tokens), as
#: examples/workflows/qwen_image_h100.json.
REFERENCE = {"blocks": 40, "width": 3072, "heads": 24, "batch": 2, "tokens": 4096}
REFERENCE |= {"text_tokens": 256, "dtype": "bf16"}
TINY = {"blocks": 4, "width": 128, "heads": 4, "batch": 1, "tokens": 256}
TINY |= {"text_tokens": 16, "dtype": "fp32"}


# -- child: one mode, one allocator config ---------------------------------------------------


def load_model_module() -> Any:
    """The stand-in's model file on its own: the bench needs neither ComfyUI nor the node."""
    spec = importlib.util.spec_from_file_location("qwen_image_model", MODEL_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode_context(mode: str) -> contextlib.AbstractContextManager[Any]:
    import torch

    if mode == "no_grad":
        return torch.no_grad()
    if mode.startswith("inference_mode"):
        return torch.inference_mode()
    return torch.enable_grad()


def model_call(mode: str, model: Any) -> Callable[..., Any]:
    """How the forward is called: through checkpoint() for the whole-model modes."""
    from torch.utils.checkpoint import checkpoint

    if mode.endswith("checkpoint") and mode != "block-checkpoint":
        return lambda *a: checkpoint(model, *a, use_reentrant=False)
    return model


def checkpoint_blocks(model: Any) -> None:
    """Wrap each block in its own checkpoint, as diffusers' gradient_checkpointing does."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self, block: nn.Module) -> None:
            super().__init__()
            self.block = block

        def forward(self, x: Any) -> Any:
            return checkpoint(self.block, x, use_reentrant=False)

    model.blocks = nn.ModuleList(Checkpointed(b) for b in model.blocks)


@contextlib.contextmanager
def nvml_peaks(on: bool) -> Iterator[dict[str, Any]]:
    """NVML's view of this process and its GPU while the steps run, via qpatch's sampler."""
    out: dict[str, Any] = {"nvml_process": None, "nvml_device": None, "nvml_note": None}
    if not on:
        yield out
        return
    sys.path.insert(0, str(REPO))
    from qpatch.vram import NvmlSource, NvmlUnavailable, Sampler

    try:
        source = NvmlSource(lambda: [os.getpid()])
    except NvmlUnavailable as e:
        out["nvml_note"] = str(e)
        yield out
        return
    sampler = Sampler(source)
    sampler.start()
    try:
        yield out
    finally:
        peaks = sampler.stop()
        source.close()
        # 0: NVML lists no process of ours (a PID namespace hides it): unknown, not zero
        out["nvml_process"] = peaks.target or None
        out["nvml_device"] = peaks.device
        if not peaks.target:
            out["nvml_note"] = "this process is not in NVML's process list (PID namespace?)"


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    qim = load_model_module()
    t_import = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # tiny CPU sizes: threads add more jitter than speed
    config = qim.QwenImageConfig(blocks=args.blocks, width=args.width, heads=args.heads)
    model = qim.QwenImageModel.create_seeded(None, config, 0, dtype, device).eval()
    if args.mode == "block-checkpoint":
        checkpoint_blocks(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if cuda:
        torch.cuda.synchronize(device)
    t_create = time.perf_counter()

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab, (args.batch, args.text_tokens), generator=gen)
    px = torch.randn(args.batch, args.tokens, config.in_channels, generator=gen)
    ids, px = ids.to(device), px.to(device, dtype)
    call = model_call(args.mode, model)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    times: list[float] = []
    checksum, has_graph = 0.0, False
    with nvml_peaks(cuda) as nv, mode_context(args.mode):
        for i in range(args.warmup + args.steps):
            t = torch.full((args.batch,), 1.0 - i / (args.warmup + args.steps), device=device)
            started = time.perf_counter()
            out = call(ids, px, t)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - started)
            checksum, has_graph = float(out.detach().float().sum()), out.grad_fn is not None
            px = (px - out.detach() / args.steps).detach()  # as the node: no graph carried over
            del out
    t_steps = time.perf_counter()

    return {
        "mode": args.mode,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", UNSET),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "allocator": torch.cuda.get_allocator_backend() if cuda else None,
        "torch": torch.__version__,
        "weights_bytes": weights,
        "peak_allocated": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved(device) if cuda else None,
        **nv,
        "step_times_s": times,
        "median_step_s": statistics.median(times),
        "output_checksum": checksum,
        "output_has_grad_fn": has_graph,
        # where a child's time goes, so a slow machine can be read (and the matrix trimmed)
        "timings_s": {
            "import": t_import - t0,
            "create_weights": t_create - t_import,
            "steps": t_steps - t_create,
        },
    }


# -- parent: every combination, then the table ------------------------------------------------


def child_argv(args: argparse.Namespace, mode: str) -> list[str]:
    sizes = ["blocks", "width", "heads", "batch", "tokens", "text_tokens", "dtype"]
    argv = [sys.executable, __file__, "--child", "--mode", mode, "--device", args.device]
    for k in sizes + ["steps", "warmup"]:
        argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return argv


def spawn(args: argparse.Namespace, mode: str, conf: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if conf != UNSET:
        env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    row: dict[str, Any] = {"mode": mode, "alloc_conf": conf}
    started = time.monotonic()
    try:
        p = subprocess.run(
            child_argv(args, mode),
            env=env,
            capture_output=True,
            text=True,
            timeout=args.child_timeout,
        )
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.child_timeout:.0f} s"}
    row["process_s"] = time.monotonic() - started
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {**row, "error": f"exit status {p.returncode}: " + " | ".join(tail)}
    return {**row, **json.loads(lines[-1][len(RESULT_MARK) :])}


def out_of_time(args: argparse.Namespace, started: float, rows: list[dict[str, Any]]) -> bool:
    """Whether one more child (as long as the slowest so far) would pass --deadline-s."""
    if not args.deadline_s:
        return False
    longest = max((r.get("process_s", 0.0) for r in rows), default=0.0)
    return time.monotonic() - started + longest > args.deadline_s


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f"{value / base:.2f}×"


def cell(value: float | None, base: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    text = f"{value / GIB:.2f} GiB" if unit == "GiB" else f"{value:.4f} s"
    return f"{text} ({ratio(value, base)})"


COLUMNS = (
    ("peak allocated", "peak_allocated", "GiB"),
    ("peak reserved", "peak_reserved", "GiB"),
    ("NVML peak (process)", "nvml_process", "GiB"),
    ("NVML peak (device)", "nvml_device", "GiB"),
    ("median step", "median_step_s", "s"),
)


def render(rows: list[dict[str, Any]]) -> str:
    """An aligned table; ratios are to the first row that succeeded."""
    base = next((r for r in rows if "error" not in r and "skipped" not in r), {})
    header = ["mode", "PYTORCH_CUDA_ALLOC_CONF"] + [c[0] for c in COLUMNS]
    body = []
    for r in rows:
        if "error" in r or "skipped" in r:
            why = f"failed: {r['error'][:160]}" if "error" in r else f"skipped ({r['skipped']})"
            body.append([r["mode"], r["alloc_conf"], why])
            continue
        body.append(
            [r["mode"], r["alloc_conf"]] + [cell(r.get(k), base.get(k), u) for _, k, u in COLUMNS]
        )
    full = [x for x in [header, *body] if len(x) == len(header)]  # failed rows run on freely
    widths = [
        max(len(x[i]) for x in ([header, *body] if i < 2 else full)) for i in range(len(header))
    ]
    lines = []
    for x in [header, *body]:
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(x)]
        if len(x) < len(header):  # an error row: its message runs on
            cells = [x[0].ljust(widths[0]), x[1].ljust(widths[1]), x[2]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def describe(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    ok = next((r for r in rows if "error" not in r and "skipped" not in r), {})
    total = args.tokens + args.text_tokens
    weights = ok.get("weights_bytes")
    return (
        f"device {ok.get('device_name', args.device)}, torch {ok.get('torch', '?')}; "
        f"{args.blocks} blocks x width {args.width} x {args.heads} heads, {args.dtype}"
        + (f" ({fmt_bytes(weights)} of weights)" if weights else "")
        + f"; batch {args.batch} x {total} tokens ({args.tokens} image + {args.text_tokens} "
        f"text); {args.steps} timed steps after {args.warmup} warm-up"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    for k in ("blocks", "width", "heads", "batch", "tokens", "text-tokens"):
        ap.add_argument(f"--{k}", type=int, help="default: reference size on CUDA, tiny on CPU")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument(
        "--alloc-confs",
        default=";".join(ALLOC_CONFS),
        help=f"semicolon list of PYTORCH_CUDA_ALLOC_CONF values ({UNSET!r}: not set)",
    )
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=0.0,
        help="skip the combinations that would end later than this many seconds (0: none)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ap.add_argument("--json-file", type=Path, help="also write the JSON object to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = REFERENCE if args.device.startswith("cuda") else TINY
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(RESULT_MARK + json.dumps(run_child(args)), flush=True)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        sys.exit(f"bench_vram: unknown modes {unknown}; known: {', '.join(MODES)}")
    confs = [c for c in args.alloc_confs.split(";") if c]
    if args.device == "cpu":
        confs = confs[:1]  # the CUDA allocator's settings change nothing on a CPU
    rows = []
    started = time.monotonic()
    for conf in confs:
        for mode in modes:
            if out_of_time(args, started, rows):
                rows.append({"mode": mode, "alloc_conf": conf, "skipped": "time budget"})
                continue
            print(f"bench_vram: {mode} / {conf} ...", file=sys.stderr, flush=True)
            rows.append(spawn(args, mode, conf))
    result = {
        "description": describe(args, rows),
        "sizes": {k: getattr(args, k) for k in [*REFERENCE, "steps", "warmup"]},
        "modes": {m: MODE_HELP[m] for m in modes},
        "rows": rows,
    }
    if args.json_file:
        args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["description"])
        print(render(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
