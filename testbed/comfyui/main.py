"""qpatch's ComfyUI stand-in: start the server the way upstream's main.py does.

The order matters and is upstream's: parse the command line first (so `--help` and a bad
flag answer before torch is imported), pick the CUDA device and the allocator backend
(both must be in the environment before torch loads), then import torch, load the custom
nodes, start the prompt worker and serve HTTP. SIGTERM keeps Python's default action, so
the process ends at once; Ctrl-C (SIGINT) stops the server and says so.

COMFYUI_STANDIN_PROFILE=current (comfy/profile.py) follows upstream master instead where
it differs at start: `--list-feature-flags`, `--verbose LEVEL [FILE]`, `--cuda-device` ids or
`all`, and, once the memory lines are out, the Dynamic VRAM decision and its line, then the
version and the `--disable-dynamic-vram` warning, in upstream's order.
"""

from __future__ import annotations

import logging
import os
import sys

from comfy import options, profile

options.enable_args_parsing()

from comfy.cli_args import args  # noqa: E402 - parses argv; --help exits here


def _setup_logging_current() -> None:
    import json

    from comfy import cli_args_current

    if args.list_feature_flags:
        print(json.dumps({}, indent=2))  # the stand-in knows no CLI-settable feature flag
        raise SystemExit(0)
    logging.addLevelName(15, "DETAIL")  # upstream's level between DEBUG and INFO
    console = logging.StreamHandler(sys.stdout if args.log_stdout else sys.stderr)
    handlers: list[logging.Handler] = [console]
    console.setLevel(cli_args_current.console_log_level(args.verbose))
    for file_level, path in cli_args_current.file_log_outputs(args.verbose):
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
        handlers[-1].setLevel(file_level)
    logging.basicConfig(
        level=min(h.level for h in handlers), format="%(message)s", handlers=handlers
    )
    if args.cuda_device == "all":
        logging.info("Set cuda devices to all")
    elif args.cuda_device is not None:
        for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
            os.environ[name] = str(args.cuda_device)
        logging.info("Set cuda device to: %s", args.cuda_device)


if profile.CURRENT:
    _setup_logging_current()
else:
    logging.basicConfig(
        level=getattr(logging, args.verbose),
        format="%(message)s",
        stream=sys.stdout if args.log_stdout else sys.stderr,
    )

    if args.cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.cuda_device)
        logging.info("Set cuda device to: %s", args.cuda_device)

import cuda_malloc  # noqa: E402, F401 - sets PYTORCH_CUDA_ALLOC_CONF before torch loads

#: Test bed only, no upstream counterpart: a server that starts, answers, then dies this
#: many seconds later (as one that crashes after warm-up does): what a rollout's monitor
#: window is for, and a health gate at the first answer cannot see.
EXIT_AFTER_ENV = "COMFYUI_STANDIN_EXIT_AFTER_S"


def _exit_later(seconds: str | None) -> None:
    if not seconds:
        return
    import threading

    def die() -> None:
        logging.error("%s=%s: exiting as asked", EXIT_AFTER_ENV, seconds)
        os._exit(1)

    threading.Timer(float(seconds), die).start()


def main() -> int:
    import threading

    import comfy.model_management as mm
    import comfyui_version
    import execution
    import folder_paths
    import nodes
    import server

    if profile.CURRENT:
        mm.log_startup()
        mm.init_dynamic_vram()
        logging.info("ComfyUI version: %s", comfyui_version.__version__)
        warning = profile.disable_flag_warning(args)
        if warning:
            logging.warning(warning)
    else:
        logging.info("ComfyUI version: %s", comfyui_version.__version__)
        mm.log_startup()
    folder_paths.ensure_folders()
    nodes.init_custom_nodes()
    if args.quick_test_for_ci:
        return 0
    queue = execution.PromptQueue()
    threading.Thread(target=queue.work, name="prompt_worker", daemon=True).start()
    _exit_later(os.environ.get(EXIT_AFTER_ENV))
    try:
        server.serve(queue)
    except KeyboardInterrupt:
        logging.info("\nStopped server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
