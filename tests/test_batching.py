import numpy as np
import pytest

from mmxattn.data.batching import TokenBudgetBatchSampler


def test_batches_respect_the_token_budget_and_cover_every_sample_once():
    sizes = np.random.default_rng(0).integers(1, 60, size=500)
    sampler = TokenBudgetBatchSampler(sizes, max_tokens=400, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) == 1 or len(b) * max(sizes[b]) <= 400


def test_bucketing_keeps_padding_small_and_epochs_reshuffle():
    sizes = np.random.default_rng(0).integers(1, 60, size=2000)
    sampler = TokenBudgetBatchSampler(sizes, max_tokens=1000, seed=1)
    batches = list(sampler)
    padded = sum(len(b) * max(sizes[b]) for b in batches)
    assert sizes.sum() / padded > 0.9
    sampler.set_epoch(1)
    assert list(sampler) != batches


@pytest.mark.parametrize("world", [2, 3, 8])
def test_ranks_share_an_epoch_without_loss_or_duplicates(world):
    sizes = np.random.default_rng(0).integers(1, 40, size=333)
    shards = [list(TokenBudgetBatchSampler(sizes, max_tokens=300, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # DDP needs the same number of steps on every rank
    seen = [i for shard in shards for b in shard for i in b]
    assert sorted(seen) == list(range(333))


def test_tiny_dataset_with_one_sample_per_batch_still_divides():
    sizes = [100] * 9
    shards = [list(TokenBudgetBatchSampler(sizes, max_tokens=100, num_replicas=8, rank=r)) for r in range(8)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(i for s in shards for b in s for i in b) == list(range(9))
