"""keep_freed_memory: raises glibc's malloc thresholds, and leaves a user's own malloc settings alone."""

import os

import pytest

from mmxattn.cpu_allocator import glibc, keep_freed_memory


@pytest.mark.skipif(glibc() is None, reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(key, raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize("key, value", [("MALLOC_TRIM_THRESHOLD_", "131072"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")])
def test_a_users_own_malloc_settings_win(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    assert keep_freed_memory() is False
