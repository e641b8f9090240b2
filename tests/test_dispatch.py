"""The dispatch loop every executor backend runs, on scripted workers and a virtual clock:
per-job timeouts, retries, stale events and the cleanup of a failed run. The real backends
run the same loop in ``test_executor_contract.py``."""

from __future__ import annotations

import pytest

from eraserd.executor import ExecutorError, RetuneJob
from eraserd.executor.dispatch import Failed, Finished, dispatch
from eraserd.executor.packing import Pack

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


class Tensor:
    """Stands in for a tensor: ``Pack.results`` only clones."""

    def __init__(self, value):
        self.value = value

    def clone(self):
        return Tensor(self.value)


class ScriptedWorkers:
    """Slots that each run one pack at a time on a virtual clock. ``script[key]`` is a list of
    behaviours, one per attempt: ``("ok", seconds)``, ``("error", seconds)``, ``("die",
    seconds)`` or ``("hang",)``."""

    def __init__(self, slots: int, script: dict[str, list[tuple]]):
        self.now = 0.0
        self.slots = slots
        self.script = {k: list(v) for k, v in script.items()}
        self.running: dict[int, tuple[Pack, tuple, float]] = {}
        self.replaced: list[int] = []
        self.started: list[tuple[str, int, float]] = []
        self.stale: list[Finished] = []

    def clock(self) -> float:
        return self.now

    def idle(self) -> list[int]:
        return [i for i in range(self.slots) if i not in self.running]

    def start(self, slot: int, pack: Pack, deadline: float) -> None:
        self.running[slot] = (pack, self.script[pack.key].pop(0), self.now)
        self.started.append((pack.key, slot, self.now))

    def _end(self, slot: int) -> float:
        _, how, began = self.running[slot]
        return float("inf") if how[0] == "hang" else began + how[1]

    def wait(self, timeout: float) -> list:
        if self.stale:
            return [self.stale.pop()]
        ends = {slot: self._end(slot) for slot in self.running}
        first = min(ends.values(), default=float("inf"))
        if first > self.now + timeout:
            self.now += timeout
            return []
        self.now = first
        events = []
        for slot in [s for s, end in ends.items() if end == first]:
            pack, how, _ = self.running.pop(slot)
            if how[0] == "ok":
                outputs = [(Tensor(j.key), Tensor(1), Tensor(2), how[1]) for j in pack.jobs]
                events.append(Finished(slot, outputs, f"dev{slot}"))
            elif how[0] == "error":
                events.append(Failed(slot, "ValueError: bad", replace=False))
            else:
                events.append(Failed(slot, "worker died (exit code -9)"))
        return events

    def replace(self, slot: int) -> None:
        self.running.pop(slot, None)
        self.replaced.append(slot)


def packs(*specs: tuple[str, float]) -> list[Pack]:
    jobs = [RetuneJob(key, cost, 10, lambda: None) for key, cost in specs]
    return [Pack((j,)) for j in sorted(jobs, key=lambda j: (-j.cost, j.key))]


def run(workers: ScriptedWorkers, the_packs: list[Pack], **kwargs):
    kwargs.setdefault("max_retries", 1)
    kwargs.setdefault("job_timeout_s", 10.0)
    return dispatch(workers, the_packs, clock=workers.clock, **kwargs)


def test_every_job_gets_a_result_largest_first_and_on_done_as_each_finishes():
    w = ScriptedWorkers(2, {"ca": [("ok", 3)], "cb": [("ok", 1)], "cc": [("ok", 1)]})
    seen = []
    out = run(w, packs(("ca", 3), ("cb", 2), ("cc", 1)), on_done=lambda j, r: seen.append(j.key))
    assert sorted(out) == ["ca", "cb", "cc"]
    assert [k for k, _, _ in w.started] == ["ca", "cb", "cc"]  # largest first
    assert seen == ["cb", "cc", "ca"]  # in the order they finished
    assert out["ca"].prompt.value == "ca" and out["ca"].attempts == 1
    assert out["cb"].device == "dev1"


def test_a_job_times_out_on_its_own_clock_while_others_keep_finishing():
    """One slot hangs while the other finishes a job every second: the hung job still fails
    at its own timeout, not when the whole run goes quiet."""
    fast = {f"f{i:02d}": [("ok", 1)] for i in range(30)}
    w = ScriptedWorkers(2, {"slow": [("hang",), ("hang",)], **fast})
    the_packs = packs(("slow", 100), *[(k, 1) for k in fast])
    with pytest.raises(
        ExecutorError,
        match=r"^cluster slow: retune failed 2 times; last error: timed out after 5 s$",
    ):
        run(w, the_packs, job_timeout_s=5.0)
    assert 10.0 < w.now < 11.0  # two attempts of 5 s each, not 30 s of fast jobs
    assert w.replaced[:2] == [0, 0]  # the hung worker, each time


def test_a_failed_attempt_is_retried_and_counted():
    w = ScriptedWorkers(1, {"ca": [("error", 1), ("ok", 1)], "cb": [("die", 1), ("ok", 1)]})
    out = run(w, packs(("ca", 2), ("cb", 1)))
    assert out["ca"].attempts == 2 and out["cb"].attempts == 2
    assert w.replaced == [0]  # the dead worker is replaced; one that raised is kept


def test_a_job_that_keeps_failing_fails_the_run_naming_cluster_attempts_and_reason():
    w = ScriptedWorkers(1, {"ca": [("error", 1)] * 3})
    with pytest.raises(
        ExecutorError, match=r"^cluster ca: retune failed 3 times; last error: ValueError: bad$"
    ):
        run(w, packs(("ca", 1)), max_retries=2)


def test_a_failed_run_leaves_no_worker_busy():
    w = ScriptedWorkers(2, {"ca": [("error", 1)], "cb": [("hang",)]})
    with pytest.raises(ExecutorError):
        run(w, packs(("ca", 2), ("cb", 1)), max_retries=0)
    assert 1 in w.replaced and w.running == {}


def test_an_event_from_a_job_given_up_on_is_ignored():
    w = ScriptedWorkers(1, {"ca": [("ok", 1)]})
    w.stale.append(Finished(5, [(Tensor("x"), Tensor(1), Tensor(2), 1.0)], "dev5"))
    out = run(w, packs(("ca", 1)))
    assert out["ca"].prompt.value == "ca"


def test_no_jobs_no_work():
    w = ScriptedWorkers(1, {})
    assert run(w, []) == {}
    assert w.started == []
