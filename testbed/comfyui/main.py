"""qpatch's ComfyUI stand-in: start the server the way upstream's main.py does.

The order matters and is upstream's: parse the command line first (so `--help` and a bad
flag answer before torch is imported), pick the CUDA device and the allocator backend
(both must be in the environment before torch loads), then import torch, load the custom
nodes, start the prompt worker and serve HTTP. SIGTERM keeps Python's default action, so
the process ends at once; Ctrl-C (SIGINT) stops the server and says so.
"""

from __future__ import annotations

import logging
import os
import sys

from comfy import options

options.enable_args_parsing()

from comfy.cli_args import args  # noqa: E402 - parses argv; --help exits here

logging.basicConfig(
    level=getattr(logging, args.verbose),
    format="%(message)s",
    stream=sys.stdout if args.log_stdout else sys.stderr,
)

if args.cuda_device is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(args.cuda_device)
    logging.info("Set cuda device to: %s", args.cuda_device)

import cuda_malloc  # noqa: E402, F401 - sets PYTORCH_CUDA_ALLOC_CONF before torch loads


def main() -> int:
    import threading

    import comfy.model_management as mm
    import comfyui_version
    import execution
    import folder_paths
    import nodes
    import server

    logging.info("ComfyUI version: %s", comfyui_version.__version__)
    mm.log_startup()
    folder_paths.ensure_folders()
    nodes.init_custom_nodes()
    if args.quick_test_for_ci:
        return 0
    queue = execution.PromptQueue()
    threading.Thread(target=queue.work, name="prompt_worker", daemon=True).start()
    try:
        server.serve(queue)
    except KeyboardInterrupt:
        logging.info("\nStopped server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
