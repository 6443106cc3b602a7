"""The node registry and the loading of custom nodes.

Every package (a folder with `__init__.py`) or module (`*.py`) in `custom_nodes/` is
imported at start and its `NODE_CLASS_MAPPINGS` merged into the registry. A package that
fails to import is logged with its traceback and skipped, and the server starts anyway:
upstream behaves so, and qpatch must not take a broken neighbour node for a broken patch.
The stand-in has no built-in nodes: everything qpatch runs is a custom node.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import traceback
from typing import Any

import folder_paths
from comfy.cli_args import args

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
#: class name -> the module it came from, for /object_info's python_module
NODE_MODULES: dict[str, str] = {}


def load_custom_node(path: str) -> bool:
    """Import one package or module; True when it loaded (with or without nodes)."""
    name = os.path.basename(path)
    module_name = name[:-3] if name.endswith(".py") else name
    if os.path.isdir(path):
        spec = importlib.util.spec_from_file_location(
            module_name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        logging.warning("Cannot import %s module for custom nodes: no loader", path)
        return False
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in a node package is the package's
        sys.modules.pop(module_name, None)
        logging.warning(traceback.format_exc())
        logging.warning("Cannot import %s module for custom nodes: %s", path, e)
        return False
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, dict):
        logging.warning(
            "Skip %s module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.", path
        )
        return True
    for class_name, cls in mappings.items():
        NODE_CLASS_MAPPINGS[class_name] = cls
        NODE_MODULES[class_name] = f"custom_nodes.{module_name}"
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    return True


def _candidates(folder: str) -> list[str]:
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name == "__pycache__":
            continue
        if os.path.isfile(path) and not name.endswith(".py"):
            continue
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "__init__.py")):
            continue
        if name.endswith(".disabled"):
            continue
        found.append(path)
    return found


def init_custom_nodes() -> list[tuple[float, str, bool]]:
    """Load every custom node; return (seconds, path, loaded) per candidate, as logged."""
    folder = folder_paths.custom_nodes_dir
    if not os.path.isdir(folder):
        return []
    times = []
    for path in _candidates(folder):
        name = os.path.basename(path)
        if args.disable_all_custom_nodes and name not in args.whitelist_custom_nodes:
            logging.info("Skipping %s due to disable_all_custom_nodes and whitelist", name)
            continue
        started = time.perf_counter()
        loaded = load_custom_node(path)
        times.append((time.perf_counter() - started, path, loaded))
    if times:
        logging.info("\nImport times for custom nodes:")
        for seconds, path, loaded in sorted(times):
            failed = "" if loaded else " (IMPORT FAILED)"
            logging.info("%6.1f seconds%s: %s", seconds, failed, path)
        logging.info("")
    return times


def node_info(class_name: str) -> dict[str, Any]:
    """One entry of /object_info: the node's inputs, outputs and labels."""
    cls = NODE_CLASS_MAPPINGS[class_name]
    inputs = cls.INPUT_TYPES()
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    return {
        "input": inputs,
        "input_order": {kind: list(spec) for kind, spec in inputs.items()},
        "output": outputs,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
        "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
        "name": class_name,
        "display_name": NODE_DISPLAY_NAME_MAPPINGS.get(class_name, class_name),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": NODE_MODULES.get(class_name, "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "deprecated": bool(getattr(cls, "DEPRECATED", False)),
        "experimental": bool(getattr(cls, "EXPERIMENTAL", False)),
    }
