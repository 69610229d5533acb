"""PromptPAR: CLIP vision-language fusion with region-aware prompt tuning (methods.md section 5).

- :mod:`parlab.methods.promptpar.regions`: the horizontal bands of the patch grid, the token
  layout of the prompted visual sequence and its attention mask.
"""
