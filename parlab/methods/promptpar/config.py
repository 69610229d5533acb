"""The PromptPAR model configuration: one frozen dataclass, saved with every run and checkpoint.

Field names follow the switches of the paper's ablation table (and of the
reference code's command line), so a row of that table is a set of fields.
Defaults are the paper's full model on ViT-L/14; the fusion block defaults to
a frozen copy of the CLIP visual tower's last block because the paper's
ImageNet ViT-B/16 block needs a second weights file.
"""

from __future__ import annotations

from dataclasses import dataclass

from parlab.errors import ConfigError
from parlab.methods.registry import MethodSpec, OptionGroup, register_method
from parlab.training.config import ConfigFile, TrainConfig, check_choices, option

FUSIONS = ("vit_b16", "clip_block", "trainable")

# docs/methods.md section 5, as TrainConfig fields of the run: SGD (momentum 0.9, weight decay 1e-4), heads and
# fusion at 8e-3 with 5 warm-up epochs, cosine, gradient clipping at 10, batch 16, weighted BCE, 224x224.
PAPER_SETTINGS = {"optimizer": "sgd", "lr": 8e-3, "momentum": 0.9, "weight_decay": 1e-4, "scheduler": "cosine",
                  "warmup_epochs": 5, "grad_clip": 10.0, "batch_size": 16, "loss": "weighted",
                  "image_size": (224, 224), "output_dir": "runs/promptpar"}
# TrainConfig fields of the baseline's model, which a PromptPAR run does not use.
PROMPTPAR_UNUSED = ("backbone", "weights", "head", "drop_rate")


@dataclass(frozen=True)
class PromptPARConfig(ConfigFile):
    # --- CLIP and data
    clip_model: str = option("ViT-L-14-quickgelu", "open_clip architecture (or parlab-clip-tiny)")
    weights: str | None = option(None, "CLIP weights: a local file, an open_clip pretrained tag (openai with "
                                       "ViT-L-14-quickgelu) or hf-hub:ORG/NAME (through open_clip and the "
                                       "Hugging Face cache); None: random weights (counting and tests only)")
    num_attributes: int = option(26, "A")
    attribute_sentences: tuple[str, ...] = option((), "one sentence per attribute (A of them)")
    image_size: tuple[int, int] = option((224, 224), "(height, width); position embeddings are interpolated")
    # --- region-aware visual prompts
    vis_prompt: int = option(50, "deep visual prompts per layer (split into div_num + 1 groups with use_div)")
    vis_depth: int = option(24, "layers that receive a fresh set of prompts (at most the tower's depth)")
    use_div: bool = option(True, "part tokens and regional prompt groups")
    div_num: int = option(4, "horizontal bands of the patch grid")
    overlap_row: int = option(2, "patch rows shared by adjacent bands")
    use_vismask: bool = option(True, "a band's part token and prompts see only the patches of that band")
    # --- global-local aggregation (auxiliary logits)
    use_GL: bool = option(True, "auxiliary logits: CLS and part tokens matched with the sentences")
    ag_threshold: float = option(0.5, "local term: max over parts when above this, else the min")
    # --- text
    use_textprompt: bool = option(True, "learnable text prompt tokens, placed after the start token")
    text_prompt: int = option(3, "number of text prompt tokens")
    text_prompt_depth: int | None = option(None, "text layers with a fresh set of text prompts per attribute "
                                                 "(VPT-deep, the paper's); None: every layer of the text tower "
                                                 "(12 on ViT-L/14 and ViT-B/16); 0 or 1: one shallow set shared "
                                                 "by all attributes")
    # --- fusion
    use_mm_former: bool = option(True, "transformer fusion block; False: the linear alternative")
    fusion: str = option("clip_block", "vit_b16 (paper: frozen ImageNet block), clip_block (frozen copy), "
                                       "trainable", FUSIONS)
    fusion_weights: str | None = option(None, "local timm vit_base_patch16_224 file, for fusion=\"vit_b16\"")
    ln_before_proj: bool = option(True, "CLIP's final LayerNorm before the projection (False: the reference code)")
    # --- optimisation (the heads/fusion group uses the run's lr and warmup_epochs)
    prompt_lr: float = option(4e-3, "SGD lr of prompts, part tokens and text prompts")
    prompt_warmup_epochs: int = option(10, "linear warm-up of that group before its cosine schedule")
    aux_weight: float = option(0.5, "weight of the auxiliary (global-local) loss")

    def __post_init__(self) -> None:
        self.coerce_fields()
        check_choices(self)
        if self.num_attributes < 1:
            raise ConfigError(f"config field 'num_attributes' must be >= 1, got {self.num_attributes}")
        if len(self.attribute_sentences) not in (0, self.num_attributes):
            raise ConfigError(f"config field 'attribute_sentences': {len(self.attribute_sentences)} sentences for "
                              f"{self.num_attributes} attributes")
        for name in ("vis_prompt", "vis_depth", "text_prompt", "text_prompt_depth", "prompt_warmup_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"config field {name!r} must be >= 0, got {getattr(self, name)}")
        if self.use_div and self.div_num < 1:
            raise ConfigError(f"config field 'div_num' must be >= 1 with use_div, got {self.div_num}")
        if self.use_vismask and not self.use_div:
            raise ConfigError("config field 'use_vismask' needs use_div (the mask is over the regions' tokens)")
        if self.use_GL and not 0.0 <= self.ag_threshold <= 1.0:
            raise ConfigError(f"config field 'ag_threshold' must be in [0, 1], got {self.ag_threshold}")


PROMPTPAR = register_method(MethodSpec(
    command="promptpar",
    task="parlab.methods.promptpar.training:PromptPARTask",
    labels=("PromptPAR",),
    groups=(OptionGroup("config", TrainConfig, "run fields (defaults: the paper's optimisation)",
                        skip=PROMPTPAR_UNUSED, defaults=PAPER_SETTINGS),
            OptionGroup("model", PromptPARConfig, "PromptPAR fields",
                        skip=("num_attributes", "attribute_sentences", "image_size"))),
    help="PromptPAR prompt tuning on a CLIP",
    description="Prompt-tune PromptPAR on CLIP weights (a local file or an open_clip tag or hub id); writes "
                "--output-dir.",
))
