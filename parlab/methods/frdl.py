"""FRDL's per-attribute feature bank (Zhou et al., "Pedestrian Attribute Recognition as
Label-balanced Multi-label Learning", ICML 2024; docs/methods.md section 4).

FRDL re-balances in feature space, one attribute at a time: for every
(attribute j, label l) it keeps a ring buffer of K detached attribute
features f_j, and each stage-2 step draws, for every attribute
independently, a label per batch slot from Bernoulli(p) and the next entry of
a shuffled pass over that buffer. Slot i of attribute j and slot i of
attribute k then come from different images, which breaks the co-occurrence
that image-level re-sampling cannot.

Unlike the public code, the bank is one preallocated (A, 2, K, C) tensor on
the model's device, push and pop are vectorised (no Python loop over samples
or attributes; only a buffer that runs out of its pass gets its own randperm),
entries are stored detached, and an empty buffer is an error naming the
attribute instead of a division by zero.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Sequence

import torch

_HUGE_PAGE = 2 << 20


def _zeros(rows: int, dim: int, device, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed (rows, dim) tensor; on a Linux CPU, in memory the kernel may back with 2 MiB pages.

    Push and pop touch rows scattered over the whole bank (0.4 GiB at A=26, K=1024, C=2048), so with
    4 KiB pages nearly every row costs a TLB miss; huge pages make push about 14% and pop about 20%
    faster there.
    """
    device = torch.device(device if device is not None else "cpu")
    nbytes = rows * dim * dtype.itemsize
    if device.type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE") or nbytes < _HUGE_PAGE:
        return torch.zeros(rows, dim, device=device, dtype=dtype)
    # Anonymous private memory is zero-filled; the tensor keeps the mapping alive.
    buffer = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel built without transparent huge pages: plain pages, same tensor
        pass
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    offset = -address % _HUGE_PAGE  # huge pages need 2 MiB-aligned ranges
    return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes, offset=offset).view(dtype).view(rows, dim)


def _widest_dtype(row_bytes: int) -> torch.dtype:
    """The widest element type whose size divides a row of ``row_bytes`` bytes."""
    return next(d for d in (torch.complex128, torch.float64, torch.float32, torch.float16, torch.uint8)
                if row_bytes % d.itemsize == 0)


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
        self._storage = _zeros(num_attributes * 2 * size + 1, dim, device, dtype)
        self.features = self._storage[:-1].view(num_attributes, 2, size, dim)  # (A, 2, K, C)
        # The same rows seen as fewer, wider elements: the CPU index_copy_ moves a row element by
        # element, so 16-byte elements make push's scatter about a fifth faster than 4-byte floats.
        wide = _widest_dtype(dim * self._storage.element_size()) if self.device.type == "cpu" else dtype
        self._wide = self._storage.view(wide)
        self._widen = self._wide.element_size() // self._storage.element_size()  # floats per wide element
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
        positive = labels == 1
        negatives, positives = (labels == 0).long().cumsum(0), positive.long().cumsum(0)  # (B, A)
        total = torch.stack([negatives[-1], positives[-1]], dim=1)  # (A, 2) entries per buffer
        # Each entry's buffer (number 2j + l of the flattened (A, 2) state), its position within that
        # buffer's share of the batch, and that share's size.
        buffer = positive.long() + torch.arange(0, 2 * a, 2, device=self.device)  # (B, A)
        rank = torch.where(positive, positives, negatives) - 1
        share = torch.where(positive, positives[-1], negatives[-1])
        keep = (labels >= 0) & (rank >= share - self.size)  # only the last K of an oversized batch
        pos = (self.write.view(-1).take(buffer) + rank) % self.size
        rows = torch.where(keep, buffer * self.size + pos, self._storage.shape[0] - 1).view(-1)
        source = features.detach().reshape(b * a, c).to(self._storage)
        if source.stride(-1) == 1 and source.storage_offset() % self._widen == 0:
            self._wide.index_copy_(0, rows, source.view(self._wide.dtype))
        else:
            self._storage.index_copy_(0, rows, source)
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
        """Start a fresh shuffled pass over the filled entries of the buffers in ``mask`` (2A,)."""
        if not mask.any():
            return
        (buffers,) = mask.nonzero(as_tuple=True)
        count = self.count.view(-1)[buffers]
        order = self.order.view(-1, self.size)
        # One randperm per reshuffled buffer: a few buffers every K / (B p) steps, and a sort of
        # random keys (the vectorised alternative) costs 7x more on the CPU.
        for buffer, n in zip(buffers.tolist(), count.tolist()):
            order[buffer, :n] = torch.randperm(n, generator=generator, device=self.device)
        # New tensors rather than in-place writes: pop keeps the previous read state while it reshuffles.
        self.read = self.read.view(-1).index_put((buffers,), torch.zeros_like(buffers)).view_as(self.read)
        self.pass_length = self.pass_length.view(-1).index_put((buffers,), count).view_as(self.pass_length)

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
        a, k = self.num_attributes, self.size
        if isinstance(p, float | int):
            if not 0 <= p <= 1:
                raise ValueError(f"p must be in [0, 1], got {p}")
        else:
            p = torch.as_tensor(p, dtype=torch.float32, device=self.device)
            if p.ndim > 1 or (p.ndim == 1 and len(p) != a) or ((p < 0) | (p > 1)).any():
                raise ValueError(f"p must be one value or {a} values in [0, 1], got {p.tolist()}")
        positive = torch.rand(batch_size, a, generator=generator, device=self.device) < p
        labels = positive.long()
        # Buffer (attribute j, label l) is number 2j + l of the flattened (A, 2) state.
        buffer = labels + torch.arange(0, 2 * a, 2, device=self.device)  # (B, A)
        need = torch.bincount(buffer.view(-1), minlength=2 * a)  # (2A,) draws per buffer
        count = self.count.view(-1)
        empty = (need > 0) & (count == 0)
        if empty.any():
            j, lab = divmod(int(empty.nonzero()[0]), 2)
            raise ValueError(f"FeatureBank: attribute {self._name(j)} has no {'positive' if lab else 'negative'} "
                             "features yet; push batches that contain both labels (or use p=0/1) before popping")
        # Rank of each draw among its buffer's draws, in batch order.
        positives = labels.cumsum(0)
        slot = torch.arange(batch_size, device=self.device).unsqueeze(1)
        rank = torch.where(positive, positives - 1, slot - positives)
        # Buffers whose pass cannot serve this batch (or that grew since it started) get a new pass;
        # draws beyond the old pass come from the new one.
        self._new_pass((self.pass_length.view(-1) != count) & (need > 0), generator)
        read, pass_length = self.read.view(-1), self.pass_length.view(-1)
        j = read.take(buffer) + rank  # index into the current pass
        length = pass_length.take(buffer)
        in_old = j < length
        order = self.order.view(-1)
        pos_old = order.take(buffer * k + j.clamp(max=k - 1))
        wraps = (read + need > pass_length) & (need > 0)
        self._new_pass(wraps, generator)
        # Past the current pass: the new one, cycled if one batch needs more draws than a buffer holds.
        j_new = torch.where(in_old, 0, (j - length) % length.clamp(min=1))
        pos = torch.where(in_old, pos_old, order.take(buffer * k + j_new))
        drawn_new = torch.bincount(buffer[~in_old], minlength=2 * a)  # draws taken from new passes
        new_length = self.pass_length.view(-1)
        self.read = torch.where(wraps, drawn_new % new_length.clamp(min=1), read + need).view(a, 2)
        rows = (buffer * k + pos).view(-1)
        if out is None:
            return self._storage.index_select(0, rows).view(batch_size, a, self.dim), labels
        torch.index_select(self._storage, 0, rows, out=out.view(batch_size * a, self.dim))
        return out, labels
