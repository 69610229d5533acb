"""PAR methods built on the training engine.

- :mod:`parlab.methods.frdl`: FRDL's per-attribute feature bank (Zhou et al., ICML 2024).
"""
