"""PromptPAR: CLIP vision-language fusion with region-aware prompt tuning (docs/methods.md section 5).

- :class:`PromptPARConfig` and :func:`build_model`: the model on an unmodified open_clip CLIP
  (:mod:`parlab.methods.promptpar.model`).
- :func:`train_promptpar`: prompt tuning on the shared engine
  (:mod:`parlab.methods.promptpar.training`).
- :mod:`parlab.methods.promptpar.regions`: the horizontal bands of the patch grid, the token
  layout of the prompted visual sequence and its attention mask.
- :mod:`parlab.methods.promptpar.pretrain`: a small CLIP trained on SynthPA's captions, for the
  embedded default where no real CLIP weights can be had.

The names below are imported on first use, so that the torch-free config can be read alone.
"""

from parlab.methods.promptpar.config import PromptPARConfig

_LAZY = {"PromptPAR": "model", "build_model": "model", "train_promptpar": "training"}

__all__ = ["PromptPAR", "PromptPARConfig", "build_model", "train_promptpar"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"parlab.methods.promptpar.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'parlab.methods.promptpar' has no attribute {name!r}")
