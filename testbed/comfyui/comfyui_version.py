"""The upstream release this stand-in imitates (qpatch's tests pin it in /system_stats)."""

__version__ = "0.14.1"
