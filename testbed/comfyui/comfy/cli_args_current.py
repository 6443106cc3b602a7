"""The command line of the stand-in's `current` profile: upstream master's flag names, value
shapes, defaults and mutually exclusive groups (Comfy-Org/ComfyUI comfy/cli_args.py,
03294572, ComfyUI 0.38.1), with help strings of our own.

What changed since 0.14.1, as far as qpatch can meet it:
- new: the Dynamic VRAM flags (`--disable-dynamic-vram`, `--enable-dynamic-vram`,
  `--vram-headroom GB`, `--disable-nvml-pressure`, `--fast-disk`, `--disable-fast-disk`),
  `--disable-cuda-graphs`, `--disable-comfy-compiler`, `--assert-graph-breaks`,
  `--fp16-intermediates`, the comfy-kitchen switches, `--use-ck-attention`, `--high-ram` in the
  cache group, `--debug-hang`, partner-node and offline switches, the assets switches,
  `--models-directory`, dated output folders, feature flags;
- gone: `--normalvram` (the memory group is now gpu-only | highvram | lowvram | novram | cpu),
  `--disable-ipex-optimize`, `--disable-assets-autoscan`;
- changed: `--cuda-device` takes a list or `all`; `--cache-ram` takes up to two GB values;
  `--verbose` takes a level and optionally a log file and may repeat; `--lowvram` does nothing
  under Dynamic VRAM (its help says so); `--fast` has no `dynamic_vram` any more.
"""

from __future__ import annotations

import argparse
import enum
import os


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


LOG_LEVELS = ("DEBUG", "DETAIL", "INFO", "WARNING", "ERROR", "CRITICAL")


def _enum_value(kind: type[enum.Enum], sep: str):
    def parse(value: str):
        try:
            return kind(value)
        except ValueError:
            choices = sep.join(m.value for m in kind)
            raise argparse.ArgumentTypeError(
                f"invalid choice: {value!r} (choose from {choices})"
            ) from None

    return parse


def _directory(path: str) -> str:
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path!r} is not a directory")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path!r} is not readable")
    return path


class _Verbose(argparse.Action):
    """`--verbose` alone (DEBUG), `--verbose LEVEL`, or `--verbose LEVEL FILE`; repeatable.
    Collects (level, file or None) pairs."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values or [])
        if not values:
            pair = ("DEBUG", None)
        elif len(values) <= 2 and values[0] in LOG_LEVELS:
            pair = (values[0], values[1] if len(values) == 2 else None)
        else:
            parser.error(f"{option_string} takes nothing, a LEVEL, or a LEVEL and a FILE")
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), pair])


def console_log_level(outputs: list[tuple[str, str | None]]) -> str:
    """The most verbose console level asked for (INFO when none)."""
    levels = [level for level, path in outputs if path is None]
    return min(levels, key=LOG_LEVELS.index, default="INFO")


def file_log_outputs(outputs: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    return [(level, path) for level, path in outputs if path is not None]


def _exclusive(parser: argparse.ArgumentParser, *flags: tuple[str, str]) -> None:
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
    add(
        "--date-based-output",
        action="store_true",
        help="Put outputs in a subfolder named after the date.",
    )
    add(
        "--date-output-format",
        type=str,
        default="%Y-%m-%d",
        help="strftime pattern of that subfolder's name.",
    )
    add("--temp-directory", type=str, default=None, help="Temporary folder.")
    add("--input-directory", type=str, default=None, help="Input folder.")
    add("--auto-launch", action="store_true", help="Open the browser at start.")
    add("--disable-auto-launch", action="store_true", help="Do not open the browser.")

    # devices and allocator
    add(
        "--cuda-device",
        type=str,
        default=None,
        metavar="DEVICE_ID",
        help="The CUDA devices this server sees: ids, comma separated, or 'all'.",
    )
    add(
        "--default-device",
        type=int,
        default=None,
        metavar="DEFAULT_DEVICE_ID",
        help="The default device; the others stay visible.",
    )
    _exclusive(
        p,
        ("--cuda-malloc", "Use cudaMallocAsync (the default with a CUDA torch >= 2.0)."),
        ("--disable-cuda-malloc", "Use torch's native CUDA allocator."),
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
    add(
        "--fp16-intermediates",
        action="store_true",
        help="fp16 instead of fp32 for tensors passed between nodes (experimental).",
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
    add("--supports-fp8-compute", action="store_true", help="Act as if fp8 compute works.")
    add(
        "--enable-triton-backend",
        action="store_true",
        help="Let comfy-kitchen use its Triton backend (off by default).",
    )
    add(
        "--disable-triton-backend",
        action="store_true",
        help="Never use comfy-kitchen's Triton backend (beats --enable-triton-backend).",
    )

    # previews and caching
    add(
        "--preview-method",
        type=_enum_value(LatentPreviewMethod, ","),
        default=LatentPreviewMethod.NoPreviews,
        metavar="[" + ",".join(m.value for m in LatentPreviewMethod) + "]",
        help="Preview method of sampler nodes.",
    )
    add("--preview-size", type=int, default=512, help="Largest preview size.")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-ram",
        nargs="*",
        type=float,
        default=[],
        metavar="GB",
        help="Drop cached outputs under RAM pressure (the default): free-RAM "
        "thresholds in GB for active and inactive caches, at most two.",
    )
    cache.add_argument(
        "--cache-classic", action="store_true", help="Keep the outputs of the last prompt's nodes."
    )
    cache.add_argument(
        "--cache-lru", type=int, default=0, help="Keep the outputs of up to N node runs."
    )
    cache.add_argument(
        "--cache-none", action="store_true", help="Keep nothing: every node runs on every prompt."
    )
    cache.add_argument(
        "--high-ram",
        action="store_true",
        help="For machines with RAM to spare (implies --cache-classic).",
    )

    # attention
    _exclusive(
        p,
        ("--use-split-cross-attention", "Split cross attention."),
        ("--use-quad-cross-attention", "Sub-quadratic cross attention."),
        ("--use-pytorch-cross-attention", "PyTorch's scaled dot product attention."),
        ("--use-sage-attention", "Sage attention."),
        ("--use-flash-attention", "FlashAttention."),
        ("--use-ck-attention", "comfy-kitchen's attention."),
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
        ("--enable-manager-legacy-ui", "The manager's legacy UI (implies --enable-manager)."),
    )

    # memory
    _exclusive(
        p,
        ("--gpu-only", "Keep and run everything on the GPU (no Dynamic VRAM)."),
        ("--highvram", "Keep models in GPU memory after use (no Dynamic VRAM)."),
        ("--lowvram", "Does nothing under Dynamic VRAM; without it, text encoders run on the CPU."),
        ("--novram", "For when --lowvram is not enough (no Dynamic VRAM)."),
        ("--cpu", "Run everything on the CPU (slow; no Dynamic VRAM)."),
    )
    add(
        "--reserve-vram",
        type=float,
        default=None,
        help="GB of VRAM to leave to the OS and other programs.",
    )
    add(
        "--vram-headroom",
        type=float,
        default=0,
        help="GB of VRAM Dynamic VRAM keeps free on top of its default, counting other "
        "programs' use.",
    )
    add(
        "--disable-nvml-pressure",
        action="store_true",
        help="Dynamic VRAM measures memory pressure through CUDA, not NVML.",
    )
    add(
        "--async-offload",
        nargs="?",
        const=2,
        type=int,
        default=None,
        metavar="NUM_STREAMS",
        help="Offload weights asynchronously over NUM_STREAMS streams (default 2; on by "
        "default on NVIDIA).",
    )
    add("--disable-async-offload", action="store_true", help="No asynchronous offloading.")
    add(
        "--disable-dynamic-vram",
        action="store_true",
        help="No Dynamic VRAM: load models by estimate (deprecated).",
    )
    add(
        "--enable-dynamic-vram",
        action="store_true",
        help="Dynamic VRAM even where it is not on by default.",
    )
    add(
        "--fast-disk",
        action="store_true",
        help="Dynamic loading and offload from disk rather than unpinned RAM.",
    )
    add("--disable-fast-disk", action="store_true", help="Never that (beats --fast-disk).")
    add("--disable-cuda-graphs", action="store_true", help="No CUDA graphs.")
    add(
        "--disable-comfy-compiler",
        action="store_true",
        help="No model compiler (and so no CUDA graphs).",
    )
    add(
        "--assert-graph-breaks",
        action="store_true",
        help="Stop on a graph break of the model compiler.",
    )
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
        type=_enum_value(PerformanceFeature, " "),
        help="Untested optimisations: "
        + " ".join(m.value for m in PerformanceFeature)
        + " (none given: all).",
    )
    add("--debug-hang", action="store_true", help="Dump every thread's stack on Ctrl-C.")
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
    add(
        "--disabled-nodes-config",
        type=str,
        default=None,
        metavar="PATH",
        help="YAML file of node ids to disable.",
    )
    add("--disable-partner-nodes", action="store_true", help="Load no partner (paid API) node.")
    add(
        "--offline",
        action="store_true",
        help="Keep the frontend off the internet (implies --disable-partner-nodes).",
    )
    add("--disable-api-nodes", action="store_true", help="Old name of --offline.")
    add("--multi-user", action="store_true", help="Per-user storage.")
    add(
        "--verbose",
        action=_Verbose,
        nargs="*",
        default=[],
        metavar="LEVEL FILE",
        help="Console log level (alone: DEBUG), or a LEVEL and a FILE to log to; repeatable.",
    )
    add("--log-stdout", action="store_true", help="Log to stdout instead of stderr.")
    add(
        "--front-end-version",
        type=str,
        default="comfyanonymous/ComfyUI@latest",
        help="Frontend to use, as owner/name@version.",
    )
    add("--front-end-root", type=_directory, default=None, help="Folder of the frontend to serve.")
    add("--user-directory", type=_directory, default=None, help="User folder (absolute path).")
    add("--models-directory", type=_directory, default=None, help="Models folder.")
    add("--enable-compress-response-body", action="store_true", help="Compress responses.")
    add(
        "--comfy-api-base",
        type=str,
        default="https://api.comfy.org",
        help="Base URL of the Comfy API.",
    )
    add(
        "--database-url",
        type=str,
        default=None,
        help="Database URL (default: comfyui.db in the user folder).",
    )
    add("--disable-assets", action="store_true", help="No assets system.")
    add("--enable-assets", action="store_true", help="Does nothing (the assets system is on).")
    add("--enable-asset-hashing", action="store_true", help="Hash assets when scanning them.")
    add(
        "--feature-flag",
        type=str,
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="Set a server feature flag (bare KEY: true); repeatable.",
    )
    add(
        "--list-feature-flags",
        action="store_true",
        help="Print the known feature flags as JSON and exit.",
    )
    return p


def finish(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """What upstream does to the parsed flags before anyone reads them."""
    if args.cache_ram is not None and len(args.cache_ram) > 2:
        parser.error("--cache-ram takes at most two values (active and inactive GB)")
    if args.high_ram:
        args.cache_classic = True
    if args.windows_standalone_build:
        args.auto_launch = True
    if args.disable_api_nodes:
        args.offline = True
    if args.offline:
        args.disable_partner_nodes = True
    if args.disable_auto_launch:
        args.auto_launch = False
    if args.disable_comfy_compiler:
        args.disable_cuda_graphs = True
    if args.force_fp16:
        args.fp16_unet = True
    if args.enable_manager_legacy_ui:
        args.enable_manager = True
    if args.fast is None:
        args.fast = set()
    elif args.fast == []:
        args.fast = set(PerformanceFeature)
    else:
        args.fast = set(args.fast)
    return args
