"""tscope.memory: glibc keeps freed buffers for reuse only while a pass runs, however passes overlap."""

from __future__ import annotations

import threading

from tscope import memory


class FakeLibc:
    def __init__(self):
        self.calls: list[tuple] = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_thresholds_are_raised_for_the_first_pass_and_restored_after_the_last(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    raised = [("mallopt", memory.M_MMAP_THRESHOLD, memory.KEPT_BLOCK),
              ("mallopt", memory.M_TRIM_THRESHOLD, memory.KEPT_FREE)]
    restored = [("mallopt", memory.M_MMAP_THRESHOLD, memory.DEFAULT_THRESHOLD),
                ("mallopt", memory.M_TRIM_THRESHOLD, memory.DEFAULT_THRESHOLD), ("malloc_trim", 0)]
    with memory.reusing_freed_memory():
        assert libc.calls == raised
        inner_started, outer_done = threading.Event(), threading.Event()

        def other_pass():
            with memory.reusing_freed_memory():
                inner_started.set()
                outer_done.wait(5)

        thread = threading.Thread(target=other_pass)
        thread.start()
        inner_started.wait(5)
    # The first block ended while another pass still runs: nothing is restored under it.
    assert libc.calls == raised
    outer_done.set()
    thread.join(5)
    assert libc.calls == raised + restored


def test_an_error_in_the_pass_still_gives_the_memory_back(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    try:
        with memory.reusing_freed_memory():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert libc.calls[-1] == ("malloc_trim", 0)


def test_without_glibc_the_block_does_nothing(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    with memory.reusing_freed_memory():
        pass
