"""Token-budget batches over length-bucketed samples (fairseq's `max_tokens`), sharded across ranks.

`ResumableDataLoader` remembers how far into the epoch training got, so a run restarted from a
mid-epoch checkpoint continues with the very next batch instead of replaying the epoch.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import DataError

log = logging.getLogger(__name__)

# The key of a batch that carries a sample's DataError message out of a DataLoader worker instead of the
# exception itself: raised there, PyTorch would re-raise it wrapped in its ~50-line "Caught DataError in
# DataLoader worker process 0 ... Original Traceback" text with the useful line last. The dataset writes it
# (`Seq2SeqDataset.__getitems__`), the Collater passes it on, `ResumableDataLoader.__iter__` raises it.
ERROR = "error"


def world_and_rank(trainer) -> tuple[int, int]:
    """(processes, this one's rank) of the trainer a data module is attached to; (1, 0) without one."""
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def epoch_budget(sizes: Sequence[int], max_tokens: int, min_batches: int | None) -> int:
    """`max_tokens`, lowered on small data so that an epoch has at least `min_batches` batches.

    A fixed budget that suits 100k samples gives a 500-sample set five updates per epoch; a budget of
    total tokens / min_batches keeps the number of updates per epoch (and so what a validation-based
    stopping rule sees) similar across data sizes. Never below the longest sample: a batch holds one.
    """
    if not min_batches or not len(sizes):
        return max_tokens
    return int(max(max(sizes), min(max_tokens, sum(sizes) // min_batches)))


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of sample indices whose padded size (batch × longest) stays within `max_tokens`.

    Samples are sorted by size (ties broken randomly per epoch) so a batch holds similar lengths and
    little padding; the order of batches is shuffled per epoch. With several ranks, each takes every
    `num_replicas`-th batch; every rank gets the same number of batches (DDP needs that) and no sample
    is dropped or repeated: when the count does not divide, the largest batches are split in two.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        max_tokens: int,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if max_tokens <= 0:
            raise DataError(f"data.max_tokens={max_tokens} must be positive")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.max_tokens, self.max_sentences = max_tokens, max_sentences or len(self.sizes)
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._skip = 0  # batches of `epoch` to leave out of the next iteration (set by `resume`)
        self._cache: tuple[int, list[list[int]]] | None = None
        if len(self.sizes) < num_replicas:
            raise DataError(f"{len(self.sizes)} samples cannot be shared by {num_replicas} processes")

    @property
    def sampler(self) -> "TokenBudgetBatchSampler":
        """Lightning calls `batch_sampler.sampler.set_epoch(epoch)` at each epoch start: that is this object."""
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0  # a resume position belongs to the epoch it was saved in
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """Make the next iteration continue epoch `epoch` after its first `consumed` batches (of this rank)."""
        self.epoch, self._skip = epoch, consumed

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            order = rng.permutation(len(self.sizes))
            order = order[np.argsort(self.sizes[order], kind="stable")]
        else:
            order = np.argsort(self.sizes, kind="stable")
        batches, current, longest = [], [], 0
        for index in order.tolist():
            size = int(self.sizes[index])
            grown = max(longest, size)
            if current and (grown * (len(current) + 1) > self.max_tokens or len(current) >= self.max_sentences):
                batches.append(current)
                current, grown = [], size
            current.append(index)
            longest = grown
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        return self._even_out(batches)

    def _even_out(self, batches: list[list[int]]) -> list[list[int]]:
        """The batches, as many as a multiple of num_replicas (every rank needs the same number)."""
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            if len(batch) > 1:
                batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
            else:  # every batch holds one sample: merge two instead (there are at least num_replicas)
                batches[-2:] = [batches[-2] + batches[-1]]
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._all_batches()[self.rank :: self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        # The batch list is fixed when iteration starts (Lightning may call set_epoch on the sampler of an
        # iterator that already exists); a resume offset applies to one iteration only.
        skip, self._skip = self._skip, 0
        return iter(self.batches()[skip:])

    def __len__(self) -> int:
        return len(self.batches())


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `TokenBudgetBatchSampler` whose position Lightning saves in every checkpoint.

    Lightning calls `state_dict()` when it writes a checkpoint and `load_state_dict()` before it starts
    iterating again on resume (any loader with both methods counts as resumable). The position is the
    number of batches this loader has handed to the training loop in the current epoch: batches that
    worker processes have prepared ahead of time are not counted, so none is lost or repeated.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        # its own generator for worker seeds: starting an epoch then draws nothing from the global torch RNG,
        # which a resumed run restores (dropout masks) and which must not depend on where iteration started
        kwargs.setdefault("generator", torch.Generator().manual_seed(torch.initial_seed()))
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._consumed = 0

    def __iter__(self):
        sampler = self.batch_sampler
        if not isinstance(sampler, TokenBudgetBatchSampler):
            raise TypeError("ResumableDataLoader needs a TokenBudgetBatchSampler as batch_sampler")
        self._epoch, self._consumed = sampler.epoch, sampler._skip
        for batch in super().__iter__():
            if isinstance(batch, dict) and ERROR in batch:  # in the main process, as with num_workers=0
                raise DataError(batch[ERROR])
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "consumed": self._consumed, "num_replicas": self.batch_sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: TokenBudgetBatchSampler = self.batch_sampler
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if state.get("num_replicas", sampler.num_replicas) != sampler.num_replicas:
            # another world size deals the epoch's batches out differently: continue at the same fraction
            done = consumed * state["num_replicas"]
            consumed = math.ceil(done / sampler.num_replicas)
            log.warning(
                "resuming with %d processes instead of %d: the rest of epoch %d starts near batch %d of %d; a few "
                "samples of this epoch may be seen twice or not at all", sampler.num_replicas,
                state["num_replicas"], epoch, done, sampler.num_replicas * len(sampler),
            )
        sampler.set_epoch(epoch)
        if consumed >= len(sampler):  # saved after the epoch's last batch: the next epoch starts from scratch
            sampler.set_epoch(epoch + 1)
        else:
            sampler.resume(epoch, consumed)
