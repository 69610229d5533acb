"""SynthPA: a synthetic miniature of PA100k, written in PA100k's own format.

Labels come from a Bayesian network calibrated on PA100k (:mod:`.network`);
images are procedurally rendered pedestrians in which every attribute is drawn
where it lives on the body (:mod:`.render`); :func:`generate` writes
``annotation.mat``, the JPEG images and one caption per image (:mod:`.writer`,
:mod:`.captions`); :mod:`.corpus` renders people apart from the dataset's
splits for pretraining a CLIP.
"""

from parlab.data.synthpa.network import ATTRIBUTES, sample_labels
from parlab.data.synthpa.captions import full_caption
from parlab.data.synthpa.writer import SIZES, generate

__all__ = ["ATTRIBUTES", "SIZES", "full_caption", "generate", "sample_labels"]
