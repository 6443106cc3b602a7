"""Command-line flags of the stand-in, with upstream ComfyUI 0.14.1's names, value shapes,
defaults and mutually exclusive groups.

qpatch checks every flag it writes against the target's own `main.py --help`, and argparse's
behaviour is what users hit: unique prefixes are accepted (`--lowv`), ambiguous ones end the
process with exit status 2 (`--fp16` could be `--fp16-unet`, `--fp16-vae` or
`--fp16-text-enc`), so is an unknown flag (`--cpu-offload`) and two flags of one exclusive
group (`--cpu --lowvram`). The help strings are ours; the flag list follows upstream's
comfy/cli_args.py of that release (qpatch's tests compare the two `--help` outputs).

Parsing happens at import, before torch is imported, so `--help` answers in a fraction of a
second. With COMFYUI_STANDIN_PROFILE=current the parser is upstream master's instead
(comfy/cli_args_current.py; see comfy/profile.py), and so are the enums and
`enables_dynamic_vram()` that this module then exports.
"""

from __future__ import annotations

import argparse
import enum

from comfy import options, profile


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"
    DynamicVRAM = "dynamic_vram"


def _preview_method(value: str) -> LatentPreviewMethod:
    try:
        return LatentPreviewMethod(value)
    except ValueError:
        choices = ",".join(m.value for m in LatentPreviewMethod)
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {choices})"
        ) from None


def _performance_feature(value: str) -> PerformanceFeature:
    try:
        return PerformanceFeature(value)
    except ValueError:
        choices = " ".join(m.value for m in PerformanceFeature)
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from {choices})"
        ) from None


def _exclusive(parser: argparse.ArgumentParser, *flags: tuple[str, str]) -> None:
    """One mutually exclusive group of plain switches: (flag, help) pairs."""
    group = parser.add_mutually_exclusive_group()
    for flag, text in flags:
        group.add_argument(flag, action="store_true", help=text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py")
    add = p.add_argument

    # network and folders
    add(
        "--listen",
        type=str,
        default="127.0.0.1",
        metavar="IP",
        nargs="?",
        const="0.0.0.0,::",
        help="Address(es) to listen on, comma separated (default 127.0.0.1); bare: every "
        "IPv4 and IPv6 address.",
    )
    add("--port", type=int, default=8188, help="Port to listen on.")
    add("--tls-keyfile", type=str, help="TLS key file (needs --tls-certfile).")
    add("--tls-certfile", type=str, help="TLS certificate file (needs --tls-keyfile).")
    add(
        "--enable-cors-header",
        type=str,
        default=None,
        metavar="ORIGIN",
        nargs="?",
        const="*",
        help="Send CORS headers, for ORIGIN or for any origin.",
    )
    add("--max-upload-size", type=float, default=100, help="Largest upload in MB.")
    add(
        "--base-directory",
        type=str,
        default=None,
        help="Base folder for models, custom_nodes, input, output, temp and user.",
    )
    add(
        "--extra-model-paths-config",
        type=str,
        default=None,
        metavar="PATH",
        nargs="+",
        action="append",
        help="Extra model path files (extra_model_paths.yaml).",
    )
    add("--output-directory", type=str, default=None, help="Output folder.")
    add("--temp-directory", type=str, default=None, help="Temporary folder.")
    add("--input-directory", type=str, default=None, help="Input folder.")
    add("--auto-launch", action="store_true", help="Open the browser at start.")
    add("--disable-auto-launch", action="store_true", help="Do not open the browser.")

    # devices and allocator
    add(
        "--cuda-device",
        type=int,
        default=None,
        metavar="DEVICE_ID",
        help="The only CUDA device this server sees.",
    )
    add(
        "--default-device",
        type=int,
        default=None,
        metavar="DEFAULT_DEVICE_ID",
        help="The default device; the others stay visible.",
    )
    malloc = p.add_mutually_exclusive_group()
    malloc.add_argument(
        "--cuda-malloc",
        action="store_true",
        help="Use cudaMallocAsync (the default with a CUDA torch >= 2.0).",
    )
    malloc.add_argument(
        "--disable-cuda-malloc", action="store_true", help="Use torch's native CUDA allocator."
    )

    # precision
    _exclusive(p, ("--force-fp32", "Everything in fp32."), ("--force-fp16", "Everything in fp16."))
    _exclusive(
        p,
        ("--fp32-unet", "Diffusion model in fp32."),
        ("--fp64-unet", "Diffusion model in fp64."),
        ("--bf16-unet", "Diffusion model in bf16."),
        ("--fp16-unet", "Diffusion model in fp16."),
        ("--fp8_e4m3fn-unet", "Diffusion model weights stored in fp8_e4m3fn."),
        ("--fp8_e5m2-unet", "Diffusion model weights stored in fp8_e5m2."),
        ("--fp8_e8m0fnu-unet", "Diffusion model weights stored in fp8_e8m0fnu."),
    )
    _exclusive(
        p,
        ("--fp16-vae", "VAE in fp16."),
        ("--fp32-vae", "VAE in fp32."),
        ("--bf16-vae", "VAE in bf16."),
    )
    add("--cpu-vae", action="store_true", help="VAE on the CPU.")
    _exclusive(
        p,
        ("--fp8_e4m3fn-text-enc", "Text encoder weights in fp8_e4m3fn."),
        ("--fp8_e5m2-text-enc", "Text encoder weights in fp8_e5m2."),
        ("--fp16-text-enc", "Text encoder weights in fp16."),
        ("--fp32-text-enc", "Text encoder weights in fp32."),
        ("--bf16-text-enc", "Text encoder weights in bf16."),
    )
    add("--force-channels-last", action="store_true", help="Channels-last memory format.")
    add(
        "--directml",
        type=int,
        nargs="?",
        metavar="DIRECTML_DEVICE",
        const=-1,
        help="Use torch-directml.",
    )
    add(
        "--oneapi-device-selector",
        type=str,
        default=None,
        metavar="SELECTOR_STRING",
        help="oneAPI device selector.",
    )
    add("--disable-ipex-optimize", action="store_true", help="No ipex.optimize.")
    add("--supports-fp8-compute", action="store_true", help="Act as if fp8 compute works.")

    # previews and caching
    add(
        "--preview-method",
        type=_preview_method,
        default=LatentPreviewMethod.NoPreviews,
        metavar="[" + ",".join(m.value for m in LatentPreviewMethod) + "]",
        help="Preview method of sampler nodes.",
    )
    add("--preview-size", type=int, default=512, help="Largest preview size.")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-classic",
        action="store_true",
        help="Keep the outputs of the last prompt's nodes (the default).",
    )
    cache.add_argument(
        "--cache-lru", type=int, default=0, help="Keep the outputs of up to N node runs."
    )
    cache.add_argument(
        "--cache-none", action="store_true", help="Keep nothing: every node runs on every prompt."
    )
    cache.add_argument(
        "--cache-ram",
        nargs="?",
        const=4.0,
        type=float,
        default=0,
        help="Drop cached outputs when free RAM falls below GB.",
    )

    # attention
    _exclusive(
        p,
        ("--use-split-cross-attention", "Split cross attention."),
        ("--use-quad-cross-attention", "Sub-quadratic cross attention."),
        ("--use-pytorch-cross-attention", "PyTorch's scaled dot product attention."),
        ("--use-sage-attention", "Sage attention."),
        ("--use-flash-attention", "FlashAttention."),
    )
    add("--disable-xformers", action="store_true", help="No xformers.")
    _exclusive(
        p,
        ("--force-upcast-attention", "Always upcast attention."),
        ("--dont-upcast-attention", "Never upcast attention."),
    )

    # manager
    add("--enable-manager", action="store_true", help="Enable the manager.")
    _exclusive(
        p,
        ("--disable-manager-ui", "Manager without its UI."),
        ("--enable-manager-legacy-ui", "The manager's legacy UI."),
    )

    # memory
    _exclusive(
        p,
        ("--gpu-only", "Keep and run everything on the GPU."),
        ("--highvram", "Keep models in GPU memory after use."),
        ("--normalvram", "Normal VRAM use even where low VRAM would be chosen."),
        ("--lowvram", "Split the diffusion model in parts to use less VRAM."),
        ("--novram", "For when --lowvram is not enough."),
        ("--cpu", "Run everything on the CPU (slow)."),
    )
    add(
        "--reserve-vram",
        type=float,
        default=None,
        help="GB of VRAM to leave to the OS and other programs.",
    )
    add(
        "--async-offload",
        nargs="?",
        const=2,
        type=int,
        default=None,
        metavar="NUM_STREAMS",
        help="Offload weights asynchronously over NUM_STREAMS streams (default 2).",
    )
    add("--disable-async-offload", action="store_true", help="No asynchronous offloading.")
    add("--force-non-blocking", action="store_true", help="Non-blocking copies everywhere.")
    add(
        "--default-hashing-function",
        type=str,
        choices=["md5", "sha1", "sha256", "sha512"],
        default="sha256",
        help="Hash for duplicate file names and contents.",
    )
    add(
        "--disable-smart-memory",
        action="store_true",
        help="Offload models to RAM instead of keeping them in VRAM.",
    )
    add("--deterministic", action="store_true", help="Deterministic torch algorithms.")
    add(
        "--fast",
        nargs="*",
        type=_performance_feature,
        help="Untested optimisations: "
        + " ".join(m.value for m in PerformanceFeature)
        + " (none given: all).",
    )
    add("--disable-pinned-memory", action="store_true", help="No pinned memory.")
    add("--mmap-torch-files", action="store_true", help="mmap ckpt/pt files.")
    add("--disable-mmap", action="store_true", help="Do not mmap safetensors.")

    # the rest
    add("--dont-print-server", action="store_true", help="Do not print server output.")
    add("--quick-test-for-ci", action="store_true", help="Start, load the nodes, exit.")
    add("--windows-standalone-build", action="store_true", help="Windows standalone build.")
    add("--disable-metadata", action="store_true", help="No prompt metadata in files.")
    add("--disable-all-custom-nodes", action="store_true", help="Load no custom node.")
    add(
        "--whitelist-custom-nodes",
        type=str,
        nargs="+",
        default=[],
        help="Custom node folders loaded even with --disable-all-custom-nodes.",
    )
    add("--disable-api-nodes", action="store_true", help="Load no API node.")
    add("--multi-user", action="store_true", help="Per-user storage.")
    add(
        "--verbose",
        default="INFO",
        const="DEBUG",
        nargs="?",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="Log level.",
    )
    add("--log-stdout", action="store_true", help="Log to stdout instead of stderr.")
    add(
        "--front-end-version",
        type=str,
        default="comfyanonymous/ComfyUI@latest",
        help="Frontend to use, as owner/name@version.",
    )
    add("--front-end-root", type=str, default=None, help="Folder of the frontend to serve.")
    add("--user-directory", type=str, default=None, help="User folder (absolute path).")
    add("--enable-compress-response-body", action="store_true", help="Compress responses.")
    add(
        "--comfy-api-base",
        type=str,
        default="https://api.comfy.org",
        help="Base URL of the Comfy API.",
    )
    add("--database-url", type=str, default=None, help="Database URL.")
    add("--disable-assets-autoscan", action="store_true", help="No asset scan at start.")
    return p


if profile.CURRENT:
    from comfy import cli_args_current as _current

    LatentPreviewMethod = _current.LatentPreviewMethod  # type: ignore[misc]  # noqa: F811
    PerformanceFeature = _current.PerformanceFeature  # type: ignore[misc]  # noqa: F811
    parser = _current.build_parser()
    args = parser.parse_args() if options.args_parsing else parser.parse_args([])
    args = _current.finish(parser, args)

    def enables_dynamic_vram() -> bool:
        return profile.dynamic_vram_requested(args)

else:
    parser = build_parser()
    args = parser.parse_args() if options.args_parsing else parser.parse_args([])

    if args.windows_standalone_build:
        args.auto_launch = True
    if args.disable_auto_launch:
        args.auto_launch = False
    if args.force_fp16:
        args.fp16_unet = True
