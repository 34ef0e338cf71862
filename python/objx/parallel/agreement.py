"""What the ranks of a vocabulary-parallel call must agree on (SPEC §4), checked with one small
all-gather per call, which also carries the shard sizes every sharded loss needs.

Each rank passes its own vocabulary shard; everything else (row count, dtypes, options, targets,
masks, the hidden states of a sharded LM head) must be the same on every rank, or the ranks would
compute different losses or issue mismatched collectives (a crash or a hang inside the backend).
A rank checks its own arguments first without raising and sends what it found, so that every rank
raises the same error, naming the rank and the argument, and none waits for a peer that left.

The vector is LENGTH int64 per rank: a layout hash (the function and its field names), an error
flag, the rank's shard size, then the fields in the order they were added. Tensors are compared by
a fingerprint (two wrapping int64 sums of their bit patterns: per row, then weighted by the row's
index), never gathered: equal tensors always agree, and a differing one is caught unless its
difference leaves both sums unchanged (a permutation inside one row, for instance).
"""

import struct
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

# int64 entries per rank: 768 bytes, whatever the call.
LENGTH = 96
# The exceptions a rank's own argument checks raise; they are sent to every rank, which re-raise them.
ARGUMENT_ERRORS = (ValueError, TypeError, NotImplementedError)
_ERROR_TYPES = {cls.__name__: cls for cls in ARGUMENT_ERRORS}
_DTYPES = (None, torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)
_INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
_INT64_MAX = 2**63 - 1
# The first slot of a scalar field: what kind of value its rank passed.
_NONE, _INT, _FLOAT, _DTYPE, _STR, _LONG_STR, _BOOL = 1, 2, 3, 4, 5, 6, 7


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _fnv(text: str) -> int:
    """64-bit FNV-1a of text as a signed int64: the same in every process (unlike hash())."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return _signed(h)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t [N, ...] as integers [N, k] holding its exact values (bit patterns for floating point)."""
    t = t.detach().reshape(t.shape[0] if t.dim() else 1, -1)
    if t.dtype == torch.bool:
        return t.to(torch.int8)
    if t.is_floating_point():
        return t.contiguous().view(_INT_VIEW[t.element_size()])
    return t


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """[2] int64: Σ of t's values (bit patterns) and Σ over rows of (2 r + 1) · row sum, wrapping."""
    if t.numel() == 0:  # an empty batch
        return torch.zeros(2, dtype=torch.int64, device=t.device)
    row_sums = _bits(t).sum(1, dtype=torch.int64)
    weights = torch.arange(1, 2 * row_sums.shape[0] + 1, 2, dtype=torch.int64, device=row_sums.device)
    return torch.stack([row_sums.sum(), (row_sums * weights).sum()])


def process_group_device(group) -> torch.device:
    """Where the group's collectives take tensors: the current CUDA device for NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Agreement:
    """The fields one sharded call checks, added in a fixed order (the layout is part of the
    check), then exchange()d once."""

    def __init__(self, fn: str, group, device: torch.device):
        self.fn, self.group, self.device = fn, group, device
        self.names, self.kinds, self.values = [], [], []  # values: python ints or [k] int64 tensors
        self.target_field = None

    def _add(self, name: str, kind: str, value) -> None:
        self.names.append(name)
        self.kinds.append(kind)
        self.values.append(value)

    def same(self, name: str, value) -> None:
        """A scalar option (None, bool, int, float, str) or a dtype that every rank must pass equal."""
        if value is None:
            self._add(name, "scalar", [_NONE, 0])
        elif isinstance(value, torch.dtype):
            self._add(name, "scalar", [_DTYPE, _DTYPES.index(value) if value in _DTYPES else -1])
        elif isinstance(value, bool):
            self._add(name, "scalar", [_BOOL, int(value)])
        elif isinstance(value, int):
            self._add(name, "scalar", [_INT, int(value)])
        elif isinstance(value, float):
            self._add(name, "scalar", [_FLOAT, struct.unpack("<q", struct.pack("<d", value))[0]])
        else:
            text = str(value).encode()
            self._add(name, "scalar", [_STR, _signed(int.from_bytes(text, "little"))] if len(text) <= 8
                      else [_LONG_STR, _fnv(str(value))])

    def tensor(self, name: str, t: Optional[torch.Tensor]) -> None:
        """A tensor every rank must pass equal (or every rank None), by fingerprint."""
        if t is None:
            self._add(name, "tensor", [1, 0, 0])
        else:
            self._add(name, "tensor", torch.cat([torch.zeros(1, dtype=torch.int64, device=t.device), fingerprint(t)]))

    def target(self, t: Optional[torch.Tensor], ignore_index: int) -> None:
        """The targets: equal on every rank, and each rank's range, so that an out-of-range target
        (known only once the shard sizes are summed) is refused on every rank."""
        self.tensor("target", t)
        self.target_field, self.ignore_index = len(self.names), int(ignore_index)
        if t is None:
            self._add("target range", "range", [_INT64_MAX, 0, -_INT64_MAX, 0])
            return
        t = t.detach().reshape(-1).to(torch.int64)
        valid = t != ignore_index
        if t.numel() == 0:
            self._add("target range", "range", [_INT64_MAX, 0, -_INT64_MAX, 0])
            return
        low = torch.where(valid, t, torch.full_like(t, _INT64_MAX))
        high = torch.where(valid, t, torch.full_like(t, -_INT64_MAX))
        low_row, high_row = low.argmin(), high.argmax()
        self._add("target range", "range", torch.stack([low[low_row], low_row, high[high_row], high_row]))

    def _vector(self, local_size: int, error: bool) -> torch.Tensor:
        head = torch.tensor([_fnv(self.fn + "|" + ",".join(self.names)), int(error), int(local_size)],
                            dtype=torch.int64, device=self.device)
        # Runs of python-int fields become one tensor each: a call has about fifteen of them.
        parts, ints = [head], []
        for value in self.values:
            if isinstance(value, torch.Tensor):
                if ints:
                    parts.append(torch.tensor(ints, dtype=torch.int64, device=self.device))
                    ints = []
                parts.append(value.to(self.device))
            else:
                ints += value
        if ints:
            parts.append(torch.tensor(ints, dtype=torch.int64, device=self.device))
        vector = torch.cat(parts)
        if vector.numel() > LENGTH:
            raise AssertionError(f"{self.fn}: {vector.numel()} agreement entries, more than {LENGTH}")
        return torch.nn.functional.pad(vector, (0, LENGTH - vector.numel()))

    def exchange(self, local_size: int, error: Optional[BaseException] = None) -> list:
        """The one all-gather; raises, identically on every rank, the first problem any rank has
        (its own argument error, a disagreement, an out-of-range target); returns every rank's
        shard size."""
        world = dist.get_world_size(self.group)
        vector = self._vector(local_size, False) if error is None else _error_vector(self.device)
        gathered = funcol.wait_tensor(funcol.all_gather_single(vector, 0, self.group))
        table = gathered.reshape(world, LENGTH).cpu().tolist()
        _raise_reported_errors(self.fn, self.group, table, error)
        if len({row[0] for row in table}) > 1:
            raise ValueError(f"{self.fn}: the ranks of process_group called different objx functions or the "
                             "same one with differently laid out arguments; every rank must make the same call")
        sizes = [row[2] for row in table]
        self._check_target_range(table, sum(sizes))
        self._check_fields(table)
        return sizes

    def _slots(self):
        start = 3
        for name, kind, value in zip(self.names, self.kinds, self.values):
            width = value.numel() if isinstance(value, torch.Tensor) else len(value)
            yield name, kind, start, width
            start += width

    def _check_target_range(self, table, vocab_size: int) -> None:
        if self.target_field is None:
            return
        _name, _kind, start, _width = list(self._slots())[self.target_field]
        for rank, row in enumerate(table):
            low, low_row, high, high_row = row[start:start + 4]
            bad = (low_row, low) if low != _INT64_MAX and low < 0 else (
                (high_row, high) if high != -_INT64_MAX and high >= vocab_size else None)
            if bad is not None:
                raise ValueError(f"{self.fn}: target out of range on rank {rank} of {len(table)}: row {bad[0]} has "
                                 f"{bad[1]}, the sharded vocabulary has {vocab_size} entries "
                                 f"(ignore_index={self.ignore_index})")

    def _check_fields(self, table) -> None:
        for name, kind, start, width in self._slots():
            if kind == "range":
                continue
            values = [tuple(row[start:start + width]) for row in table]
            if len(set(values)) == 1:
                continue
            differing = next(r for r, v in enumerate(values) if v != values[0])
            if kind == "tensor":
                detail = ", ".join(f"rank {r}: {'None' if values[r][0] else 'a tensor'}" for r in (0, differing))
                if not values[0][0] and not values[differing][0]:
                    detail = f"rank 0 and rank {differing} pass different values"
            else:
                detail = ", ".join(f"rank {r}: {_describe(v)}" for r, v in enumerate(values))
            raise ValueError(f"{self.fn}: the ranks of process_group disagree on {name} ({detail}); every rank "
                             "must pass the same arguments, except its own vocabulary shard")


def _describe(value: tuple) -> str:
    """A gathered scalar field as its rank passed it (strings only by their hash)."""
    tag, payload = value
    if tag == _NONE:
        return "None"
    if tag == _DTYPE:
        return str(_DTYPES[payload]) if 0 <= payload < len(_DTYPES) else "another dtype"
    if tag == _FLOAT:
        return repr(struct.unpack("<d", struct.pack("<q", payload))[0])
    if tag == _STR:
        return repr((payload % 2**64).to_bytes(8, "little").rstrip(b"\0").decode())
    if tag == _LONG_STR:
        return "a longer string"
    if tag == _BOOL:
        return str(bool(payload))
    return str(payload)


def _error_vector(device: torch.device) -> torch.Tensor:
    vector = torch.zeros(LENGTH, dtype=torch.int64, device=device)
    vector[1] = 1
    return vector


def _raise_reported_errors(fn: str, group, table, error: Optional[BaseException]) -> None:
    """When some rank found its arguments wrong, every rank learns the first such rank's error (a
    second collective, only on this path) and raises it."""
    failed = [rank for rank, row in enumerate(table) if row[1]]
    if not failed:
        return
    report = None if error is None else (type(error).__name__, str(error))
    reports = [None] * len(table)
    dist.all_gather_object(reports, report, group=group)
    kind, message = reports[failed[0]]
    prefix = f"{fn}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    raise _ERROR_TYPES.get(kind, ValueError)(f"{fn}: rank {failed[0]} of {len(table)}: {message}")


def raise_on_every_rank(fn: str, group, error: BaseException, device: Optional[torch.device] = None):
    """For a rank whose argument checks failed before it could describe its call: takes part in the
    call's all-gather so that every rank raises `error` (see Agreement.exchange). Never returns."""
    Agreement(fn, group, device or process_group_device(group)).exchange(0, error)
    raise AssertionError("unreachable: exchange raises the reported error")


def checked_on_every_rank(fn: str, group, device, check):
    """check(): a front door's own argument checks, returning what the call needs. Without a
    group as it is; with one, an argument error it raises is raised on every rank of the group
    (see raise_on_every_rank), since the other ranks are about to wait in the call's collective."""
    if group is None:
        return check()
    try:
        return check()
    except ARGUMENT_ERRORS as error:
        from .vocab import check_group

        check_group(fn, group)
        raise_on_every_rank(fn, group, error, device if isinstance(device, torch.device) else None)
