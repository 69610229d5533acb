"""PromptPAR's region layout and attention mask, on the grids of ViT-B/16 at 224, 256 and 256x192."""

from __future__ import annotations

import pytest
import torch

from parlab.methods.promptpar.regions import TokenLayout, band_rows, region_attention_mask, split_prompts


def test_sixteen_rows_give_the_reference_bands():
    assert band_rows(16, 4, 2) == [(0, 4), (3, 8), (7, 12), (11, 15)]


@pytest.mark.parametrize("rows", [14, 16, 12, 24])
@pytest.mark.parametrize("overlap", [0, 1, 2, 3])
def test_bands_cover_every_row_and_neighbours_share_overlap_rows(rows, overlap):
    bands = band_rows(rows, 4, overlap)
    assert bands[0][0] == 0 and bands[-1][1] == rows - 1
    covered = set().union(*(range(a, b + 1) for a, b in bands))
    assert covered == set(range(rows))
    for (_, end), (start, _) in zip(bands, bands[1:]):
        assert end - start + 1 == overlap
    sizes = [b - a + 1 for a, b in band_rows(rows, 4, 0)]
    assert max(sizes) - min(sizes) <= 1  # as even as the rows allow


def test_fourteen_rows_of_vit_b16_at_224():
    assert band_rows(14, 4, 2) == [(0, 4), (3, 8), (7, 11), (10, 13)]


def test_bad_layouts_are_clear_errors():
    with pytest.raises(ValueError, match="cannot cut 3 patch rows into 4 regions"):
        band_rows(3, 4)
    with pytest.raises(ValueError, match="5 equal groups"):
        split_prompts(48, 4)
    assert split_prompts(50, 4) == (10, 10)


@pytest.mark.parametrize("grid", [(14, 14), (16, 16), (16, 12)])
def test_mask_lets_a_region_see_only_its_group_and_band(grid):
    layout = TokenLayout(grid, global_prompts=10, regions=4, prompts_per_region=10)
    bands = band_rows(grid[0], 4, 2)
    mask = region_attention_mask(layout, bands)
    assert mask.shape == (layout.length, layout.length) == (1 + grid[0] * grid[1] + 10 + 4 * 11,) * 2
    for k, (first, last) in enumerate(bands):
        for row in range(layout.region(k).start, layout.region(k).stop):
            seen = set(torch.nonzero(mask[row] == 0).flatten().tolist())
            band = {1 + r * grid[1] + c for r in range(first, last + 1) for c in range(grid[1])}
            assert seen == band | set(range(layout.region(k).start, layout.region(k).stop))
    # The class token, the global prompts and the patches see everything.
    open_rows = [0, *range(layout.patches.start, layout.patches.stop), *range(layout.global_slice.start,
                                                                             layout.global_slice.stop)]
    assert (mask[open_rows] == 0).all()


def test_masked_attention_ignores_patches_outside_the_band():
    torch.manual_seed(0)
    layout = TokenLayout((16, 12), global_prompts=2, regions=4, prompts_per_region=2)
    bands = band_rows(16, 4, 2)
    mask = region_attention_mask(layout, bands)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, layout.length, 8)
    part = layout.part_token(1)  # band rows 3-8
    outside, inside = 1 + 12 * 12 + 5, 1 + 5 * 12 + 5  # row 12 and row 5, column 5

    def part_output(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return attention(tokens, tokens, tokens, attn_mask=mask)[0][0, part]

    before = part_output(x)
    moved = x.clone()
    moved[0, outside] += 10.0
    assert torch.equal(part_output(moved), before)
    moved[0, inside] += 10.0
    assert not torch.allclose(part_output(moved), before)
