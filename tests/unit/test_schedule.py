"""The listener's flush queue, on a clock the test turns."""

from __future__ import annotations

import threading

import pytest

from signalbus.schedule import IDLE, OUTAGE_PROBE_MAX, SENDING, SWEEP, FlushQueue

SWEEP_INTERVAL = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(clock: Clock) -> FlushQueue[str]:
    return FlushQueue(["a", "b", "c"], SWEEP_INTERVAL, 30.0, clock)


def take_now(queue: FlushQueue[str]) -> object:
    """What :meth:`FlushQueue.take` hands out at once (fails the test rather than block)."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(queue.take()), daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        queue.close()
        thread.join(2)
        pytest.fail("take() waited although something was due")
    return result[0]


def start_taking(queue: FlushQueue[str]) -> tuple[threading.Thread, list[object]]:
    """A worker thread calling :meth:`FlushQueue.take` once, and the list it appends to."""
    taken: list[object] = []
    worker = threading.Thread(target=lambda: taken.append(queue.take()), daemon=True)
    worker.start()
    return worker, taken


def test_requests_are_served_first_come_first_served_once_each(queue: FlushQueue[str]) -> None:
    for model in ("b", "a", "b"):
        queue.request(model)
    assert take_now(queue) == "b"
    assert take_now(queue) == "a"
    queue.close()
    assert queue.take() is None


def test_a_model_is_given_to_one_worker_at_a_time_and_requeued_when_asked_meanwhile(
    queue: FlushQueue[str],
) -> None:
    queue.request("a")
    assert take_now(queue) == "a"
    queue.request("a")  # a notification while "a" is being flushed
    queue.request("b")
    assert take_now(queue) == "b"
    assert not queue.others_waiting()
    queue.done("a", drained=True)
    assert take_now(queue) == "a"


def test_an_unfinished_flush_goes_to_the_back_of_the_queue(queue: FlushQueue[str]) -> None:
    queue.request("a")
    assert take_now(queue) == "a"
    queue.request("b")
    assert queue.others_waiting()  # the flush of "a" ends after its burst
    queue.done("a", drained=False)
    assert take_now(queue) == "b"
    assert take_now(queue) == "a"


def test_a_drained_model_is_not_queued_again(queue: FlushQueue[str]) -> None:
    queue.request("a")
    assert take_now(queue) == "a"
    queue.done("a", drained=True)
    queue.sweep()
    assert take_now(queue) is SWEEP  # nothing else is due


def test_a_failed_model_waits_for_its_retry_and_ignores_plain_requests(
    queue: FlushQueue[str], clock: Clock
) -> None:
    queue.request("a")
    assert take_now(queue) == "a"
    delay = queue.failed("a")
    assert 0.25 <= delay <= 0.5 and queue.failures("a") == 1
    queue.request("a")
    queue.request("b")
    assert take_now(queue) == "b"
    clock.now += delay
    assert take_now(queue) == "a"
    queue.done("a", drained=True)
    assert queue.failures("a") == 0


def test_a_catch_up_cuts_the_backoff_short(queue: FlushQueue[str]) -> None:
    queue.request("a")
    take_now(queue)
    queue.failed("a")
    queue.request("a", catch_up=True)
    assert take_now(queue) == "a"


def test_a_catch_up_sweep_cuts_every_backoff_short(queue: FlushQueue[str]) -> None:
    for model in ("a", "b"):
        queue.request(model)
        take_now(queue)
        queue.failed(model)
    queue.sweep(catch_up=True)
    assert take_now(queue) is SWEEP
    queue.swept(ok=True)
    queue.request("b")
    assert take_now(queue) == "b"


def test_retry_delays_double_up_to_the_cap(clock: Clock) -> None:
    queue = FlushQueue(["a"], 3600.0, 30.0, clock)
    delays = []
    for _ in range(10):
        queue.request("a")
        assert take_now(queue) == "a"
        delays.append(queue.failed("a"))
        clock.now += delays[-1]
    assert queue.failures("a") == 10
    assert all(delay <= 30.0 for delay in delays)
    assert delays[-1] >= 15.0


def test_the_sweep_comes_every_interval_and_one_at_a_time(
    queue: FlushQueue[str], clock: Clock
) -> None:
    clock.now += SWEEP_INTERVAL
    queue.request("a")
    assert take_now(queue) is SWEEP
    queue.sweep()  # asked for while one runs: it comes after
    assert take_now(queue) == "a"
    assert queue.swept(ok=True) == SWEEP_INTERVAL
    assert take_now(queue) is SWEEP


def test_a_failed_sweep_is_retried_sooner_than_the_interval(
    queue: FlushQueue[str], clock: Clock
) -> None:
    queue.sweep()
    assert take_now(queue) is SWEEP
    delay = queue.swept(ok=False)
    assert delay <= 0.5 and queue.sweep_failures() == 1
    clock.now += delay
    assert take_now(queue) is SWEEP
    queue.swept(ok=True)
    assert queue.sweep_failures() == 0


def test_take_waits_until_something_is_due(queue: FlushQueue[str]) -> None:
    worker, taken = start_taking(queue)
    worker.join(0.05)
    assert worker.is_alive() and not taken
    queue.request("c")
    worker.join(2)
    assert taken == ["c"]


def test_close_releases_every_waiting_worker(queue: FlushQueue[str]) -> None:
    workers = [threading.Thread(target=queue.take, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    queue.close()
    for worker in workers:
        worker.join(2)
        assert not worker.is_alive()


@pytest.fixture
def databases(clock: Clock) -> FlushQueue[str]:
    """Models "a" and "b" in database 1, "c" in database 2."""
    return FlushQueue(["a", "b", "c"], 3600.0, 30.0, clock, {"a": 1, "b": 1, "c": 2}.__getitem__)


def test_a_database_outage_holds_its_models_and_probes_with_one(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    assert take_now(databases) == "a"
    delay = databases.outage("a", 1)
    assert delay <= OUTAGE_PROBE_MAX
    databases.request("b")
    databases.request("c")
    assert take_now(databases) == "c"  # another database: not held
    assert not databases.others_waiting()  # "a" and "b" are held
    clock.now += delay
    assert take_now(databases) == "a"  # the probe, first in line
    assert databases.outage("a", 1) <= OUTAGE_PROBE_MAX  # still down
    clock.now += OUTAGE_PROBE_MAX
    assert take_now(databases) == "b"  # the held models take turns probing
    databases.done("b", drained=True)  # back: "a" goes at once
    assert take_now(databases) == "a"


def test_probe_delays_stay_short_however_long_the_outage(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    for _ in range(20):
        assert take_now(databases) == "a"
        delay = databases.outage("a", 1)
        assert delay <= OUTAGE_PROBE_MAX
        clock.now += delay
    assert databases.failures("a") == 0  # an outage is not the model's failure


def test_a_broker_outage_holds_every_model(databases: FlushQueue[str], clock: Clock) -> None:
    databases.request("c")
    assert take_now(databases) == "c"
    delay = databases.outage("c", SENDING)
    databases.request("a")
    assert not databases.others_waiting()
    clock.now += delay
    assert take_now(databases) == "c"
    databases.done("c", drained=True)
    assert take_now(databases) == "a"


def test_a_database_found_working_ends_its_outage(databases: FlushQueue[str], clock: Clock) -> None:
    databases.request("a")
    take_now(databases)
    databases.outage("a", 1)
    databases.available(1)  # e.g. its LISTEN connection is back
    assert take_now(databases) == "a"


def test_a_sweep_that_works_ends_the_database_outages_only(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    take_now(databases)
    databases.outage("a", 1)
    databases.request("c")
    take_now(databases)
    databases.outage("c", SENDING)
    databases.sweep()
    assert take_now(databases) is SWEEP
    databases.swept(ok=True)
    assert not databases.others_waiting()  # the broker is still out


def test_take_says_idle_when_nothing_comes() -> None:
    queue = FlushQueue(["a"], 3600.0, 30.0)  # on the real clock: idleness is waited for
    assert queue.take(idle_after=0.01) is IDLE
    queue.request("a")
    assert queue.take(idle_after=0.01) == "a"


def test_an_outage_with_nothing_to_probe_with_does_not_spin(clock: Clock) -> None:
    calls = 0

    def counting_clock() -> float:
        nonlocal calls
        calls += 1
        return clock.now

    queue = FlushQueue(["a", "b"], 3600.0, 30.0, counting_clock)
    queue.request("a")
    assert take_now(queue) == "a"
    clock.now += queue.outage("a", SENDING)
    assert take_now(queue) == "a"  # the probe
    queue.failed("a")  # its own failure (say a nacked row): the broker's state is unknown
    calls = 0
    worker, taken = start_taking(queue)
    worker.join(0.2)
    assert worker.is_alive() and not taken
    assert calls < 10  # it waits for "a"'s retry, not in a loop on the past probe time
    queue.close()
    worker.join(2)


def test_one_probe_at_a_time_though_other_flushes_fail_meanwhile(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    databases.request("b")
    assert take_now(databases) == "a"
    assert take_now(databases) == "b"  # two flushes in flight when the broker goes
    clock.now += databases.outage("a", SENDING)
    assert take_now(databases) == "a"  # the probe
    databases.outage("b", SENDING)  # the other flush, started before the outage, fails
    clock.now += OUTAGE_PROBE_MAX
    worker, taken = start_taking(databases)
    worker.join(0.1)
    assert not taken  # "a" still probes: "b" waits for its outcome
    databases.done("a", drained=True)
    worker.join(2)
    assert taken == ["b"]


def test_a_model_failing_its_probe_lets_another_probe_next(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    databases.request("b")
    assert take_now(databases) == "a"
    clock.now += databases.outage("a", SENDING)  # say "a"'s own exchange is missing
    assert take_now(databases) == "a"  # the probe, first in line
    clock.now += databases.outage("a", SENDING)
    assert take_now(databases) == "b"  # not "a" for ever: "b" is not starved
    databases.done("b", drained=True)  # the broker works: "a" goes again
    assert take_now(databases) == "a"


def test_a_flush_that_sent_nothing_does_not_end_a_broker_outage(
    databases: FlushQueue[str], clock: Clock
) -> None:
    databases.request("a")
    assert take_now(databases) == "a"
    clock.now += databases.outage("a", SENDING)
    databases.request("b")
    assert take_now(databases) == "a"  # the probe
    databases.done("a", drained=True, sent=False)  # another listener took its rows
    assert not databases.others_waiting()  # the broker was not tried: "b" stays held
    assert take_now(databases) == "b"  # the next probe, at once
    databases.done("b", drained=True)
    databases.request("c")
    assert databases.others_waiting()  # "b" sent: the outage is over


def test_due_work_goes_before_idleness(queue: FlushQueue[str], clock: Clock) -> None:
    queue.request("a")
    assert queue.take(idle_after=0.0) == "a"  # idle at once, and yet a model was due


def test_a_later_flush_comes_when_due_and_a_request_brings_it_forward(
    queue: FlushQueue[str], clock: Clock
) -> None:
    queue.request("a")
    assert queue.take() == "a"
    queue.done("a", drained=True)
    queue.later("a", 0.5)
    assert queue.failures("a") == 0
    clock.now += 0.5
    assert queue.take() == "a"
    queue.done("a", drained=True)
    queue.later("a", 5.0)
    queue.request("a")  # not a failure's backoff: a notification does not wait for it
    assert queue.take() == "a"
