"""The PromptPAR model configuration: one frozen dataclass, saved with every run and checkpoint.

Field names follow the switches of the paper's ablation table (and of the
reference code's command line), so a row of that table is a set of fields.
It is a run's ``method``: the loss, optimiser and schedule fields it shares
with the baseline (:class:`~parlab.training.config.SupervisedConfig`) default
to the paper's optimisation, the rest to the paper's full model on ViT-L/14;
the fusion block defaults to a frozen copy of the CLIP visual tower's last
block because the paper's ImageNet ViT-B/16 block needs a second weights
file. :data:`PAPER_RUN` and :data:`PAPER_DATA` are the paper's run and data
fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from parlab.errors import ConfigError
from parlab.methods.registry import MethodSpec, OptionGroup, register_method
from parlab.training.config import DataConfig, RunFields, SupervisedConfig, option

FUSIONS = ("vit_b16", "clip_block", "trainable")

# docs/methods.md section 5: batch 16 and 224x224 inputs (the optimisation is PromptPARConfig's defaults).
PAPER_RUN = {"batch_size": 16, "output_dir": "runs/promptpar"}
PAPER_DATA = {"image_size": (224, 224)}


@dataclass(frozen=True)
class PromptPARConfig(SupervisedConfig):
    # --- the paper's optimisation (docs/methods.md section 5): SGD (momentum 0.9, weight decay 1e-4), heads and
    # fusion at 8e-3 with 5 warm-up epochs, cosine, gradient clipping at 10 per group, weighted BCE
    loss: str = option("weighted", "bce; weighted: exp(1-r)/exp(r) (the paper's); sqrt: Tan et al. AAAI 2020",
                       ("bce", "weighted", "sqrt"))
    optimizer: str = option("sgd", "adam, adamw or sgd (the paper's)", ("adam", "adamw", "sgd"))
    lr: float = option(8e-3, "lr of the heads, embeddings and fusion group", bounds="> 0")
    weight_decay: float = option(1e-4, "L2 (adam, sgd) or decoupled (adamw)", bounds=">= 0")
    scheduler: str = option("cosine", "cosine (per step, the paper's), plateau, multistep or none",
                            ("plateau", "multistep", "cosine", "none"))
    warmup_epochs: int = option(5, "linear warm-up of the heads group before its cosine schedule", bounds=">= 0")
    grad_clip: float = option(10.0, "max gradient norm of each parameter group; 0 disables", bounds=">= 0")
    # --- CLIP and data
    clip_model: str = option("ViT-L-14-quickgelu", "open_clip architecture (or parlab-clip-tiny)")
    weights: str | None = option(None, "CLIP weights: a local file, an open_clip pretrained tag (openai with "
                                       "ViT-L-14-quickgelu) or hf-hub:ORG/NAME (through open_clip and the "
                                       "Hugging Face cache); None: random weights (counting and tests only)")
    num_attributes: int = option(26, "A", bounds=">= 1")
    attribute_sentences: tuple[str, ...] = option((), "one sentence per attribute (A of them)")
    image_size: tuple[int, int] = option((224, 224), "(height, width); position embeddings are interpolated",
                                         bounds=">= 8")
    # --- region-aware visual prompts
    vis_prompt: int = option(50, "deep visual prompts per layer (split into div_num + 1 groups with use_div)",
                             bounds=">= 0")
    vis_depth: int = option(24, "layers that receive a fresh set of prompts (at most the tower's depth)", bounds=">= 0")
    use_div: bool = option(True, "part tokens and regional prompt groups")
    div_num: int = option(4, "horizontal bands of the patch grid", bounds=">= 1")
    overlap_row: int = option(2, "patch rows shared by adjacent bands", bounds=">= 0")
    use_vismask: bool = option(True, "a band's part token and prompts see only the patches of that band")
    # --- global-local aggregation (auxiliary logits)
    use_GL: bool = option(True, "auxiliary logits: CLS and part tokens matched with the sentences")
    ag_threshold: float = option(0.5, "local term: max over parts when above this, else the min", bounds="in [0, 1]")
    # --- text
    use_textprompt: bool = option(True, "learnable text prompt tokens, placed after the start token")
    text_prompt: int = option(3, "number of text prompt tokens", bounds=">= 0")
    text_prompt_depth: int | None = option(None, "text layers with a fresh set of text prompts per attribute "
                                                 "(VPT-deep, the paper's); None: every layer of the text tower "
                                                 "(12 on ViT-L/14 and ViT-B/16); 0 or 1: one shallow set shared "
                                                 "by all attributes", bounds=">= 0")
    # --- fusion
    use_mm_former: bool = option(True, "transformer fusion block; False: the linear alternative")
    fusion: str = option("clip_block", "vit_b16 (paper: frozen ImageNet block), clip_block (frozen copy), "
                                       "trainable", FUSIONS)
    fusion_weights: str | None = option(None, 'for fusion="vit_b16": "pretrained" (timm\'s '
                                              'vit_base_patch16_224.orig_in21k_ft_in1k, the paper\'s block, through '
                                              'timm and the Hugging Face cache), hf-hub:ORG/NAME or a local timm '
                                              'vit_base_patch16_224 file')
    ln_before_proj: bool = option(True, "CLIP's final LayerNorm before the projection (False: the reference code)")
    logit_bn: bool = option(True, "BatchNorm on the main logits (the paper's code); False: the heads' logits as they are")
    # --- optimisation of the prompts (the heads/fusion group uses lr and warmup_epochs above)
    prompt_lr: float = option(4e-3, "SGD lr of prompts, part tokens and text prompts", bounds="> 0")
    prompt_warmup_epochs: int = option(10, "linear warm-up of that group before its cosine schedule", bounds=">= 0")
    aux_weight: float = option(0.5, "weight of the auxiliary (global-local) loss", bounds=">= 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.attribute_sentences) not in (0, self.num_attributes):
            raise ConfigError(f"config field 'attribute_sentences': {len(self.attribute_sentences)} sentences for "
                              f"{self.num_attributes} attributes")
        if self.use_vismask and not self.use_div:
            raise ConfigError("config field 'use_vismask' needs use_div (the mask is over the regions' tokens)")


PROMPTPAR = register_method(MethodSpec(
    command="promptpar",
    task="parlab.methods.promptpar.training:PromptPARTask",
    labels=("PromptPAR",),
    groups=(OptionGroup("run", RunFields, "run fields", defaults=PAPER_RUN),
            OptionGroup("data", DataConfig, "data fields", defaults=PAPER_DATA),
            OptionGroup("method", PromptPARConfig, "PromptPAR fields (defaults: the paper's)",
                        skip=("num_attributes", "attribute_sentences", "image_size"))),
    help="PromptPAR prompt tuning on a CLIP",
    description="Prompt-tune PromptPAR on CLIP weights (a local file or an open_clip tag or hub id); writes "
                "--output-dir.",
))
