"""FRDL's per-attribute feature bank (Zhou et al., "Pedestrian Attribute Recognition as
Label-balanced Multi-label Learning", ICML 2024; methods.md section 4).

FRDL re-balances in feature space, one attribute at a time: for every
(attribute j, label l) it keeps a ring buffer of K detached attribute
features f_j, and each stage-2 step draws, for every attribute
independently, a label per batch slot from Bernoulli(p) and the next entry of
a shuffled pass over that buffer. Slot i of attribute j and slot i of
attribute k then come from different images, which breaks the co-occurrence
that image-level re-sampling cannot.

Unlike the public code, the bank is one preallocated (A, 2, K, C) tensor on
the model's device, push and pop are vectorised (no Python loop over samples
or attributes), entries are stored detached, and an empty buffer is an error
naming the attribute instead of a division by zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class FeatureBank:
    """Ring buffers of attribute features per (attribute, label).

    Args:
        num_attributes: A.
        dim: C, the size of one attribute feature f_j.
        size: K, entries per (attribute, label) buffer.
        device, dtype: where and how the (A, 2, K, C) storage lives.
        attributes: optional names, used in error messages.
    """

    def __init__(self, num_attributes: int, dim: int, size: int = 1024, device=None,
                 dtype: torch.dtype = torch.float32, attributes: Sequence[str] | None = None) -> None:
        self.num_attributes, self.dim, self.size = num_attributes, dim, size
        self.attributes = list(attributes) if attributes is not None else None
        # One extra row at the end takes the writes of skipped entries, so push is a single
        # index_copy_ straight from the batch, with no gather of the entries it keeps.
        self._storage = torch.zeros(num_attributes * 2 * size + 1, dim, device=device, dtype=dtype)
        self.features = self._storage[:-1].view(num_attributes, 2, size, dim)  # (A, 2, K, C)
        self.count = torch.zeros(num_attributes, 2, dtype=torch.long, device=device)  # filled entries (<= K)
        self.write = torch.zeros(num_attributes, 2, dtype=torch.long, device=device)  # next slot to overwrite
        self.order = torch.zeros(num_attributes, 2, size, dtype=torch.long, device=device)  # current pass
        self.read = torch.zeros(num_attributes, 2, dtype=torch.long, device=device)  # position in the pass
        self.pass_length = torch.zeros(num_attributes, 2, dtype=torch.long, device=device)  # 0: no pass yet

    @property
    def device(self) -> torch.device:
        return self.features.device

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Contents and read/write positions, for a training checkpoint (resuming continues exactly)."""
        return {"storage": self._storage, "count": self.count, "write": self.write, "order": self.order,
                "read": self.read, "pass_length": self.pass_length}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        wrong = [f"{k}: {tuple(state[k].shape) if k in state else 'missing'} vs {tuple(v.shape)}"
                 for k, v in expected.items() if k not in state or state[k].shape != v.shape]
        if wrong:
            raise ValueError("FeatureBank state does not fit this bank (A, K or C differ): " + "; ".join(wrong))
        for key, value in expected.items():
            value.copy_(state[key])

    def _name(self, attribute: int) -> str:
        return repr(self.attributes[attribute]) if self.attributes else str(attribute)

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch: ``features`` (B, A, C), ``labels`` (B, A) in {0, 1}; -1 entries are skipped.

        Each (attribute, label) buffer receives its entries in batch order, overwriting its oldest
        ones once full; a batch with more than K entries for one buffer keeps the last K.
        """
        b, a, c = features.shape
        if (a, c) != (self.num_attributes, self.dim) or labels.shape != (b, a):
            raise ValueError(f"push expects features (B, {self.num_attributes}, {self.dim}) and labels (B, "
                             f"{self.num_attributes}); got {tuple(features.shape)} and {tuple(labels.shape)}")
        labels = labels.to(self.device).long()
        onehot = torch.stack([labels == 0, labels == 1], dim=-1).long()  # (B, A, 2)
        rank = onehot.cumsum(0) - 1  # position of each entry within its buffer's share of the batch
        total = onehot.sum(0)  # (A, 2) entries per buffer
        lab = labels.clamp(min=0)
        rank_own = rank.gather(2, lab.unsqueeze(-1)).squeeze(-1)  # (B, A)
        total_own = total.gather(1, lab.t()).t()  # (B, A): the buffer size of each entry's own buffer
        keep = (labels >= 0) & (rank_own >= total_own - self.size)  # only the last K of an oversized batch
        ar = torch.arange(a, device=self.device).expand(b, a)
        pos = (self.write[ar, lab] + rank_own) % self.size
        rows = torch.where(keep, (ar * 2 + lab) * self.size + pos, self._storage.shape[0] - 1)
        self._storage.index_copy_(0, rows.reshape(-1), features.detach().reshape(b * a, c).to(self._storage))
        self.write = (self.write + total) % self.size
        self.count = torch.minimum(self.count + total, torch.full_like(self.count, self.size))

    @torch.no_grad()
    def fill_by_repetition(self) -> None:
        """Fill every non-empty, non-full buffer to K by repeating its entries in order."""
        k = torch.arange(self.size, device=self.device)
        partial = (self.count > 0) & (self.count < self.size)
        if not partial.any():
            return
        ai, li = partial.nonzero(as_tuple=True)
        source = k.unsqueeze(0) % self.count[ai, li].unsqueeze(1)  # (n, K)
        self.features[ai, li] = self.features[ai.unsqueeze(1), li.unsqueeze(1), source]
        self.count[ai, li] = self.size

    def _new_pass(self, mask: torch.Tensor, generator: torch.Generator | None) -> None:
        """Start a fresh shuffled pass over the filled entries of the buffers in ``mask`` (A, 2)."""
        if not mask.any():
            return
        ai, li = mask.nonzero(as_tuple=True)
        keys = torch.rand(len(ai), self.size, generator=generator, device=self.device)
        filled = torch.arange(self.size, device=self.device).unsqueeze(0) < self.count[ai, li].unsqueeze(1)
        keys = torch.where(filled, keys, torch.full_like(keys, 2.0))  # unfilled slots sort last
        # New tensors rather than in-place writes: pop keeps the previous read state while it reshuffles.
        self.order[ai, li] = keys.argsort(dim=1)
        self.read = self.read.index_put((ai, li), torch.zeros_like(ai))
        self.pass_length = self.pass_length.index_put((ai, li), self.count[ai, li])

    @torch.no_grad()
    def pop(self, batch_size: int, p: float | torch.Tensor = 0.5, generator: torch.Generator | None = None,
            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A label-balanced batch: features (B, A, C) and labels (B, A).

        For every attribute and slot independently, the label is drawn from Bernoulli(p) and the
        feature is the next entry of a shuffled pass over that (attribute, label) buffer; a pass
        that runs out is followed by a new shuffle. ``p`` is one prior or one per attribute (A,)
        (0 or 1 for an attribute that has only one label). ``generator`` must live on the bank's
        device. ``out``: an optional (B, A, C) tensor to gather into; a training loop that reuses
        one saves allocating (and, on the CPU, page-faulting) B*A*C fresh floats every step.
        """
        a = self.num_attributes
        p = torch.as_tensor(p, dtype=torch.float32, device=self.device)
        if p.ndim > 1 or (p.ndim == 1 and len(p) != a) or ((p < 0) | (p > 1)).any():
            raise ValueError(f"p must be one value or {a} values in [0, 1], got {p.tolist()}")
        labels = (torch.rand(batch_size, a, generator=generator, device=self.device) < p).long()
        onehot = torch.stack([labels == 0, labels == 1], dim=-1).long()
        need = onehot.sum(0)  # (A, 2) draws per buffer
        empty = (need > 0) & (self.count == 0)
        if empty.any():
            j, lab = (int(v) for v in empty.nonzero()[0])
            raise ValueError(f"FeatureBank: attribute {self._name(j)} has no {'positive' if lab else 'negative'} "
                             "features yet; push batches that contain both labels (or use p=0/1) before popping")
        rank = (onehot.cumsum(0) - 1).gather(2, labels.unsqueeze(-1)).squeeze(-1)  # (B, A)
        # Buffers whose pass cannot serve this batch (or that grew since it started) get a new pass;
        # draws beyond the old pass come from the new one.
        stale = (self.pass_length != self.count) & (need > 0)
        self._new_pass(stale, generator)
        ar = torch.arange(a, device=self.device).expand(batch_size, a)
        j = self.read[ar, labels] + rank  # index into the current pass
        length = self.pass_length[ar, labels]
        in_old = j < length
        pos_old = self.order[ar, labels, j.clamp(max=self.size - 1)]
        read, pass_length = self.read, self.pass_length
        wraps = (read + need > pass_length) & (need > 0)
        self._new_pass(wraps, generator)
        # Past the current pass: the new one, cycled if one batch needs more draws than a buffer holds.
        j_new = torch.where(in_old, torch.zeros_like(j), (j - length) % length.clamp(min=1))
        pos = torch.where(in_old, pos_old, self.order[ar, labels, j_new])
        drawn_new = ((~in_old).long().unsqueeze(-1) * onehot).sum(0)  # (A, 2) draws taken from new passes
        self.read = torch.where(wraps, drawn_new % self.pass_length.clamp(min=1), read + need)
        rows = ((ar * 2 + labels) * self.size + pos).reshape(-1)
        if out is None:
            return self._storage.index_select(0, rows).view(batch_size, a, self.dim), labels
        torch.index_select(self._storage, 0, rows, out=out.view(batch_size * a, self.dim))
        return out, labels
