"""Where the stand-in keeps models, inputs, outputs and custom nodes: ComfyUI's layout.

Custom nodes find their weights under `models_dir` (our Qwen-Image node reads
`<models_dir>/qwen_image`), so these names are the ones upstream's folder_paths exports.
"""

from __future__ import annotations

import os

from comfy.cli_args import args

base_path = os.path.abspath(args.base_directory or os.path.dirname(os.path.abspath(__file__)))
models_dir = os.path.join(base_path, "models")
custom_nodes_dir = os.path.join(base_path, "custom_nodes")
output_directory = os.path.abspath(args.output_directory or os.path.join(base_path, "output"))
input_directory = os.path.abspath(args.input_directory or os.path.join(base_path, "input"))
temp_directory = os.path.abspath(args.temp_directory or os.path.join(base_path, "temp"))
user_directory = os.path.abspath(args.user_directory or os.path.join(base_path, "user"))


def get_output_directory() -> str:
    return output_directory


def get_input_directory() -> str:
    return input_directory


def get_temp_directory() -> str:
    return temp_directory


def get_user_directory() -> str:
    return user_directory


def get_folder_paths(folder_name: str) -> list[str]:
    return [os.path.join(models_dir, folder_name)]


def ensure_folders() -> None:
    for folder in (models_dir, output_directory, input_directory, temp_directory, user_directory):
        os.makedirs(folder, exist_ok=True)
