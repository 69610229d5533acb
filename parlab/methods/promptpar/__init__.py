"""PromptPAR: CLIP vision-language fusion with region-aware prompt tuning (methods.md section 5).

- :mod:`parlab.methods.promptpar.regions`: the horizontal bands of the patch grid, the token
  layout of the prompted visual sequence and its attention mask.
- :mod:`parlab.methods.promptpar.pretrain`: a small CLIP trained on SynthPA's captions, for the
  embedded default where no real CLIP weights can be had.
"""
