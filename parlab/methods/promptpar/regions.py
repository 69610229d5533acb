"""Region-aware prompts of PromptPAR: bands of the patch grid, token layout, attention mask.

PromptPAR (Wang et al., "Pedestrian Attribute Recognition via CLIP based
Vision-Language Fusion with Prompt Tuning"; docs/methods.md section 5) cuts the
patch grid into horizontal bands that overlap by a few rows, gives each band a
part token and a group of prompts, and masks attention so that a band's
tokens see only themselves and the patches of their band; the class token,
the global prompts and the patches see everything. The reference code
hard-codes a grid 16 patches wide; here every index comes from the actual
grid, so ViT-B/16 at 224 (14x14) and non-square inputs (256x192: 16x12) work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def band_rows(grid_rows: int, regions: int = 4, overlap: int = 2) -> list[tuple[int, int]]:
    """Inclusive (first, last) patch row of each band, top to bottom.

    The rows are split as evenly as possible (earlier bands take the extra rows), then each band
    grows by ``overlap // 2`` rows upwards and the rest downwards, within the grid, so adjacent
    bands share ``overlap`` rows. For 16 rows, 4 regions and overlap 2 this is the reference
    layout: rows 0-4, 3-8, 7-12, 11-15.
    """
    if not 1 <= regions <= grid_rows:
        raise ValueError(f"cannot cut {grid_rows} patch rows into {regions} regions")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 rows, got {overlap}")
    up, down = overlap // 2, overlap - overlap // 2
    bands, start = [], 0
    for k in range(regions):
        size = grid_rows // regions + (1 if k < grid_rows % regions else 0)
        bands.append((max(0, start - up), min(grid_rows - 1, start + size - 1 + down)))
        start += size
    return bands


@dataclass(frozen=True)
class TokenLayout:
    """Order of the prompted visual sequence: CLS, patches, global prompts, then per region its
    part token followed by its prompts.

    Attributes:
        grid: (rows, cols) of the patch grid.
        global_prompts: prompts every token may attend to and that attend to everything.
        regions: number of bands, one part token each.
        prompts_per_region: prompts of each band's group.
    """

    grid: tuple[int, int]
    global_prompts: int
    regions: int
    prompts_per_region: int

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def length(self) -> int:
        return 1 + self.num_patches + self.global_prompts + self.regions * (1 + self.prompts_per_region)

    @property
    def patches(self) -> slice:
        return slice(1, 1 + self.num_patches)

    @property
    def global_slice(self) -> slice:
        start = 1 + self.num_patches
        return slice(start, start + self.global_prompts)

    def region(self, k: int) -> slice:
        """Part token k and its prompts."""
        start = self.global_slice.stop + k * (1 + self.prompts_per_region)
        return slice(start, start + 1 + self.prompts_per_region)

    def part_token(self, k: int) -> int:
        return self.region(k).start

    def prompt_positions(self) -> torch.Tensor:
        """(P,) sequence indices of the prompts, in the order of a layer's prompt set (global, then per band)."""
        spans = [self.global_slice] + [slice(self.region(k).start + 1, self.region(k).stop)
                                       for k in range(self.regions)]
        return torch.cat([torch.arange(s.start, s.stop) for s in spans]).long()

    def band_patches(self, first_row: int, last_row: int) -> torch.Tensor:
        """Sequence indices of the patches in rows ``first_row..last_row`` (inclusive)."""
        rows = torch.arange(first_row, last_row + 1).unsqueeze(1)
        return (1 + rows * self.grid[1] + torch.arange(self.grid[1])).reshape(-1)


def split_prompts(total: int, regions: int) -> tuple[int, int]:
    """(global, per region) prompts: ``total`` split into regions + 1 equal groups (50, 4 -> 10, 10)."""
    groups = regions + 1
    if total < groups or total % groups:
        raise ValueError(f"{total} visual prompts cannot be split into {groups} equal groups (one global and "
                         f"one per region); use a multiple of {groups}")
    return total // groups, total // groups


def region_attention_mask(layout: TokenLayout, bands: list[tuple[int, int]],
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask (L, L): 0 where query row may attend to key column, -inf elsewhere.

    Only the rows of a region's tokens are masked: they see their own group and their band's
    patches. Everything else attends to the whole sequence.
    """
    if len(bands) != layout.regions:
        raise ValueError(f"{len(bands)} bands for a layout of {layout.regions} regions")
    mask = torch.zeros(layout.length, layout.length, dtype=dtype)
    for k, (first, last) in enumerate(bands):
        allowed = torch.zeros(layout.length, dtype=torch.bool)
        allowed[layout.region(k)] = True
        allowed[layout.band_patches(first, last)] = True
        mask[layout.region(k)] = torch.where(allowed, 0.0, float("-inf")).to(dtype)
    return mask
