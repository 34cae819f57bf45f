"""Export a trained checkpoint to the layouts serving engines load: :func:`~dllm.export.sdar.export_sdar`."""

from dllm.export.sdar import export_sdar

__all__ = ["export_sdar"]
