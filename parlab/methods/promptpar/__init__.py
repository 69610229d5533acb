"""PromptPAR: CLIP vision-language fusion with region-aware prompt tuning (methods.md section 5).

- :class:`PromptPARConfig` and :func:`build_model`: the model on an unmodified open_clip CLIP
  (:mod:`parlab.methods.promptpar.model`).
- :func:`train_promptpar`: prompt tuning on the shared engine
  (:mod:`parlab.methods.promptpar.training`).
- :mod:`parlab.methods.promptpar.regions`: the horizontal bands of the patch grid, the token
  layout of the prompted visual sequence and its attention mask.
- :mod:`parlab.methods.promptpar.pretrain`: a small CLIP trained on SynthPA's captions, for the
  embedded default where no real CLIP weights can be had.
"""

from parlab.methods.promptpar.config import PromptPARConfig
from parlab.methods.promptpar.model import PromptPAR, build_model
from parlab.methods.promptpar.training import promptpar_run_config, train_promptpar

__all__ = ["PromptPAR", "PromptPARConfig", "build_model", "promptpar_run_config", "train_promptpar"]
