"""A node package that fails to import, as one with a missing dependency does: ComfyUI
must log it and start anyway."""

import qpatch_conformance_missing_dependency  # noqa: F401 - the failure is the point

NODE_CLASS_MAPPINGS: dict[str, type] = {}
