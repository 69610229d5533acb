"""FRDL's feature bank: balanced, independent draws from the right buffers, ring semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parlab.methods.frdl import FeatureBank


def tagged(labels: torch.Tensor, ids: torch.Tensor, dim: int = 3) -> torch.Tensor:
    """Features (B, A, dim) that encode (attribute, label, sample id): [a, label, id, 0...]."""
    b, a = labels.shape
    f = torch.zeros(b, a, dim)
    f[..., 0] = torch.arange(a).float()
    f[..., 1] = labels.float()
    f[..., 2] = ids.float().unsqueeze(1).expand(b, a)
    return f


def full_bank(labels: torch.Tensor, size: int = 64) -> FeatureBank:
    bank = FeatureBank(labels.shape[1], 3, size=size)
    bank.push(tagged(labels, torch.arange(len(labels))), labels)
    return bank


def test_popped_labels_have_prior_p_independently_across_attributes():
    g = torch.Generator().manual_seed(0)
    # Attribute 1 copies attribute 0 (perfectly correlated) and is positive 10% of the time.
    a0 = (torch.rand(2000, generator=g) < 0.1).long()
    labels = torch.stack([a0, a0, 1 - a0], dim=1)
    assert np.corrcoef(labels[:, 0].numpy(), labels[:, 1].numpy())[0, 1] == pytest.approx(1.0)
    bank = full_bank(labels, size=128)
    for p in (0.5, 0.3):
        _, popped = bank.pop(20000, p=p, generator=g)
        prior = popped.float().mean(0)
        assert torch.all((prior - p).abs() < 4 * (p * (1 - p) / 20000) ** 0.5), prior
        r = np.corrcoef(popped[:, 0].numpy(), popped[:, 1].numpy())[0, 1]
        assert abs(r) < 0.03


def test_popped_features_come_from_their_attribute_and_label_buffer():
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(300, 5, generator=g) < 0.3).long()
    bank = full_bank(labels, size=64)
    feats, popped = bank.pop(500, generator=g)
    assert torch.equal(feats[..., 0], torch.arange(5).float().expand(500, 5))
    assert torch.equal(feats[..., 1], popped.float())
    ids = feats[..., 2].long()
    assert torch.equal(labels[ids, torch.arange(5)], popped)  # the image really had that label


def test_one_pass_visits_every_entry_once():
    labels = torch.ones(8, 1, dtype=torch.long)
    bank = full_bank(labels, size=8)
    g = torch.Generator().manual_seed(2)
    first = torch.cat([bank.pop(3, p=1.0, generator=g)[0][:, 0, 2] for _ in range(2)])
    rest = bank.pop(2, p=1.0, generator=g)[0][:, 0, 2]
    assert sorted(torch.cat([first, rest]).long().tolist()) == list(range(8))
    nxt = torch.cat([bank.pop(4, p=1.0, generator=g)[0][:, 0, 2] for _ in range(2)])
    assert sorted(nxt.long().tolist()) == list(range(8))  # the next pass, reshuffled


def test_push_after_wrap_around_overwrites_the_oldest():
    bank = FeatureBank(1, 3, size=4)
    for i in range(6):
        bank.push(tagged(torch.ones(1, 1, dtype=torch.long), torch.tensor([i])), torch.ones(1, 1, dtype=torch.long))
    assert sorted(bank.features[0, 1, :, 2].long().tolist()) == [2, 3, 4, 5]
    big = FeatureBank(1, 3, size=4)  # one batch larger than the buffer keeps its last K
    labels = torch.ones(7, 1, dtype=torch.long)
    big.push(tagged(labels, torch.arange(7)), labels)
    assert sorted(big.features[0, 1, :, 2].long().tolist()) == [3, 4, 5, 6]
    assert big.count[0, 1] == 4 and big.count[0, 0] == 0


def test_ignored_entries_are_not_pushed():
    bank = FeatureBank(2, 3, size=4)
    labels = torch.tensor([[1, -1], [0, 1]])
    bank.push(tagged(labels.clamp(min=0), torch.arange(2)), labels)
    assert bank.count.tolist() == [[1, 1], [0, 1]]


def test_fill_by_repetition():
    bank = FeatureBank(2, 3, size=5)
    labels = torch.tensor([[1, 0], [1, 0]])
    bank.push(tagged(labels, torch.tensor([7, 9])), labels)
    bank.fill_by_repetition()
    assert bank.features[0, 1, :, 2].long().tolist() == [7, 9, 7, 9, 7]
    assert bank.count.tolist() == [[0, 5], [5, 0]]  # empty buffers stay empty


def test_batch_of_one_and_empty_buffer_error():
    bank = FeatureBank(2, 3, size=4, attributes=["Hat", "Skirt"])
    labels = torch.tensor([[1, 1]])
    bank.push(tagged(labels, torch.tensor([0])), labels)
    feats, popped = bank.pop(1, p=1.0)
    assert feats.shape == (1, 2, 3) and popped.tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="attribute 'Hat' has no negative features"):
        bank.pop(1, p=0.0)


def test_bank_holds_no_autograd_graph():
    bank = FeatureBank(2, 4, size=4)
    w = torch.randn(4, requires_grad=True)
    feats = torch.randn(3, 2, 4) * w
    bank.push(feats, torch.tensor([[0, 1], [1, 0], [1, 1]]))
    assert not bank.features.requires_grad and bank.features.grad_fn is None
    popped, _ = bank.pop(2, p=1.0)
    assert not popped.requires_grad


def test_pop_into_a_given_tensor_matches_a_fresh_pop():
    labels = (torch.rand(200, 4, generator=torch.Generator().manual_seed(3)) < 0.4).long()
    fresh, reused = full_bank(labels), full_bank(labels)
    out = torch.empty(16, 4, 3)
    for seed in range(3):
        f1, l1 = fresh.pop(16, generator=torch.Generator().manual_seed(seed))
        f2, l2 = reused.pop(16, generator=torch.Generator().manual_seed(seed), out=out)
        assert f2 is out and torch.equal(f1, f2) and torch.equal(l1, l2)


def ring_reference(batches, num_attributes: int, size: int) -> dict[tuple[int, int], dict[int, torch.Tensor]]:
    """Slot -> feature of every (attribute, label) ring buffer, filled one entry at a time."""
    slots = {(a, lab): {} for a in range(num_attributes) for lab in (0, 1)}
    written = dict.fromkeys(slots, 0)
    for feats, labels in batches:
        for b in range(len(labels)):
            for a in range(num_attributes):
                lab = int(labels[b, a])
                if lab >= 0:
                    slots[a, lab][written[a, lab] % size] = feats[b, a]
                    written[a, lab] += 1
    return slots


@pytest.mark.parametrize("dim, layout", [(3, "contiguous"), (6, "contiguous"), (512, "contiguous"),
                                         (512, "transposed"), (512, "offset")])
def test_push_stores_each_row_in_its_ring_slot(dim, layout):
    # dim 512 at A=4, K=160 makes a 2.5 MiB bank (the huge-page path) whose rows push copies as
    # 16-byte elements; a transposed or oddly offset batch takes the element-by-element path.
    g = torch.Generator().manual_seed(dim)
    a, size = 4, 160
    bank = FeatureBank(a, dim, size=size)
    batches = []
    for _ in range(5):
        labels = torch.randint(-1, 2, (70, a), generator=g)
        if layout == "transposed":
            feats = torch.randn(dim, a, 70, generator=g).permute(2, 1, 0)
        elif layout == "offset":
            feats = torch.randn(1 + 70 * a * dim, generator=g)[1:].view(70, a, dim)
        else:
            feats = torch.randn(70, a, dim, generator=g)
        bank.push(feats, labels)
        batches.append((feats, labels))
    for (j, lab), slots in ring_reference(batches, a, size).items():
        assert int(bank.count[j, lab]) == len(slots)
        for slot, row in slots.items():
            assert torch.equal(bank.features[j, lab, slot], row)


def test_state_dict_round_trip_through_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(4)
    bank = FeatureBank(4, 512, size=160)  # on the huge-page path
    labels = (torch.rand(300, 4, generator=g) < 0.4).long()
    bank.push(torch.randn(300, 4, 512, generator=g), labels)
    bank.pop(50, generator=g)
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    restored = FeatureBank(4, 512, size=160)
    restored.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert torch.equal(restored.features, bank.features)
    f1, l1 = bank.pop(40, generator=torch.Generator().manual_seed(5))
    f2, l2 = restored.pop(40, generator=torch.Generator().manual_seed(5))
    assert torch.equal(f1, f2) and torch.equal(l1, l2)
