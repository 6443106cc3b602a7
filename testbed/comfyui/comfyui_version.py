"""The upstream release this stand-in imitates (qpatch's tests pin it in /system_stats):
0.14.1, or under COMFYUI_STANDIN_PROFILE=current the version upstream master reports
(comfy/profile.py)."""

from comfy import profile

__version__ = profile.version()
