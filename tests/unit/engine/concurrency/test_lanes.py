"""consumer.engine.concurrency.lanes: which queued messages may start, per ordering."""

from __future__ import annotations

from consumer.checkpoint.progress import PartitionProgress
from consumer.engine.concurrency.dispatcher import job_factory
from consumer.engine.concurrency.lanes import Lanes, Ordering
from consumer.engine.concurrency.runners import Job
from consumer.engine.concurrency.tracker import PartitionWork
from consumer.message import Message, Scope

SCOPE = Scope("g")


class Queue:
    """Lanes, the messages pushed to them, and the jobs started, by offset and partition."""

    def __init__(self, ordering: Ordering, concurrency: int) -> None:
        self.lanes = Lanes(ordering, concurrency, job_factory(SCOPE, None))
        self.works: dict[int, PartitionWork] = {}
        self.jobs: dict[tuple[int, int], Job] = {}

    def push(self, offset: int, key: bytes | None, partition: int = 0) -> None:
        work = self.works.get(partition)
        if work is None:
            work = self.works[partition] = PartitionWork(
                "t", partition, progress=PartitionProgress("t", partition), lanes=self.lanes)
        self.lanes.push(Message("t", partition, offset, b"v", key=key, timestamp=0.0), work)

    def start(self, chain: int = 1) -> Job | None:
        """The next job to start (its chain's jobs noted too), or None."""
        job = self.lanes.start(chain)
        following = job
        while following is not None:
            self.jobs[following.message.partition, following.message.offset] = following
            following = following.next
        return job

    def job(self, offset: int, partition: int = 0) -> Job:
        """The job that started the message at ``offset`` last."""
        return self.jobs[partition, offset]

    def queued_per_partition(self) -> dict[int, int]:
        return {p: work.queued for p, work in self.works.items() if work.queued}


def startable(queue: Queue) -> list[int]:
    started = []
    while (job := queue.start()) is not None:
        started.append(job.message.offset)
    return started


def filled(ordering: Ordering, concurrency: int = 10) -> Queue:
    queue = Queue(ordering, concurrency)
    for offset, key in enumerate([b"a", b"a", b"b", b"c", b"b"]):
        queue.push(offset, key)
    return queue


def test_key_ordering_starts_one_message_per_key_in_offset_order() -> None:
    queue = filled("key")
    assert startable(queue) == [0, 2, 3]  # the first of a, b and c
    queue.lanes.finished(queue.job(2))
    assert startable(queue) == [4]  # b's next; a's next waits for 0
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [1]


def test_partition_ordering_starts_one_message_per_partition() -> None:
    queue = filled("partition")
    queue.push(0, b"z", partition=1)
    assert startable(queue) == [0, 0]  # the head of partition 0 and of partition 1
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [1]


def test_none_ordering_starts_everything_up_to_the_concurrency() -> None:
    queue = filled("none", concurrency=3)
    assert startable(queue) == [0, 1, 2]
    assert (queue.lanes.in_flight, queue.lanes.queued) == (3, 2)
    queue.lanes.finished(queue.job(1))
    assert startable(queue) == [3]


def test_a_held_message_blocks_only_its_key_until_its_retry_time() -> None:
    queue = filled("key")
    assert startable(queue) == [0, 2, 3]
    queue.lanes.hold(queue.job(0), until=10.0)
    queue.lanes.finished(queue.job(2))
    assert startable(queue) == [4]  # b goes on; a's 1 waits behind the held 0
    queue.lanes.release(9.0)
    assert startable(queue) == []
    queue.lanes.release(10.0)
    assert startable(queue) == [0]  # the failed message first, then its key's next
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [1]


def test_dropping_a_partition_forgets_its_queue_but_a_running_key_stays_busy() -> None:
    queue = filled("key")
    assert startable(queue) == [0, 2, 3]
    assert queue.lanes.drop({("t", 0)}) == 2
    assert (queue.lanes.queued, queue.queued_per_partition()) == (0, {})
    queue.push(7, b"a")  # reassigned: a's 0 still runs, so a's 7 waits
    assert startable(queue) == []
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [7]


def test_a_reassigned_partitions_message_starts_as_the_new_assignments_work() -> None:
    """A running key's lane outlives its partition's assignment; a message the next
    assignment brings waits in it, and its job counts for that assignment's work."""
    queue = filled("key")
    assert startable(queue) == [0, 2, 3]
    first = queue.works.pop(0)
    queue.lanes.drop({("t", 0)})
    queue.push(7, b"a")  # the next assignment's work: a's 0 (the previous one's) still runs
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [7]
    assert queue.job(7).owner is queue.works[0] is not first
    assert (first.queued, queue.works[0].queued) == (0, 0)


def test_dropping_above_the_highest_started_offsets_keeps_what_lies_below_them() -> None:
    queue = filled("key")
    queue.push(0, b"x", partition=1)
    queue.push(1, b"x", partition=1)
    assert startable(queue) == [0, 2, 3, 0]  # a, b, c of partition 0; x of partition 1
    queue.lanes.hold(queue.job(0, partition=1), until=10.0)
    # partition 0: 3 is the highest started, so a's 1 stays and b's 4 goes; partition 1 is
    # not given (nothing started): its queue goes, but not the message held for a retry
    assert queue.lanes.drop_above({("t", 0): 3}) == 2
    assert (queue.lanes.queued, queue.queued_per_partition()) == (2, {0: 1, 1: 1})
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [1]


def test_dropping_above_with_none_ordering() -> None:
    queue = filled("none", concurrency=2)
    assert startable(queue) == [0, 1]
    assert queue.lanes.drop_above({("t", 0): 2}) == 2  # 3 and 4
    assert startable(queue) == []  # two run: 2 waits for room
    queue.lanes.finished(queue.job(0))
    assert startable(queue) == [2]


def chain_of(job: Job) -> list[int]:
    offsets = [job.message.offset]
    while (job := job.next) is not None:  # type: ignore[assignment]
        offsets.append(job.message.offset)
    return offsets


def keyed_chains(concurrency: int = 10) -> Queue:
    """Key a at 0, 1, 5, 6; b at 2, 4; c at 3."""
    queue = Queue("key", concurrency=concurrency)
    for offset, key in enumerate([b"a", b"a", b"b", b"c", b"b", b"a", b"a"]):
        queue.push(offset, key)
    return queue


def test_a_started_job_takes_the_next_of_its_lane_along_counted_queued_until_they_start(
) -> None:
    queue = keyed_chains()
    started = [queue.start(chain=3) for _ in range(3)]
    assert [chain_of(job) for job in started if job] == [[0, 1, 5], [2, 4], [3]]
    assert queue.start(chain=3) is None
    lanes = queue.lanes
    assert (lanes.in_flight, lanes.queued, queue.queued_per_partition()) == (3, 4, {0: 4})
    lanes.finished(queue.job(0))  # its worker went on with 1
    assert (lanes.in_flight, lanes.queued) == (3, 3)
    lanes.finished(queue.job(1))  # and with 5
    lanes.finished(queue.job(5))  # the chain ends: a's lane is free for 6
    assert (lanes.in_flight, lanes.queued) == (2, 2)  # b's 4 (chained) and a's 6
    assert startable(queue) == [6]


def test_a_job_that_raised_gives_its_chain_back_to_the_head_of_its_lane() -> None:
    queue = keyed_chains()
    head = queue.start(chain=2)
    assert head is not None and chain_of(head) == [0, 1]
    queue.lanes.give_back(head)
    assert head.next is None and queue.lanes.queued == 4 + 2  # 1 is queued again
    queue.lanes.hold(head, until=10.0)
    queue.lanes.release(10.0)
    assert [chain_of(job) for job in iter(lambda: queue.start(chain=10), None)] == [
        [0, 1, 5, 6], [2, 4], [3]]  # the retried 0 first, then a's others in order


def test_a_cut_chain_forgets_what_did_not_start_and_frees_its_lane() -> None:
    queue = keyed_chains()
    head = queue.start(chain=4)
    assert head is not None and chain_of(head) == [0, 1, 5, 6]
    lanes = queue.lanes
    lanes.finished(head)  # 1 started
    lanes.finished(queue.job(1))  # 5 was next, but cut: its worker did not start it
    lanes.not_started(queue.job(5))  # nor 6 behind it
    assert (lanes.in_flight, lanes.queued, queue.queued_per_partition()) == (0, 3, {0: 3})
    queue.push(7, b"a")
    assert startable(queue) == [2, 3, 7]  # a's lane is free again


def test_lanes_take_turns_instead_of_chains_when_slots_run_short() -> None:
    """Two slots, three keys waiting: a chain would keep c waiting behind a's later
    messages; instead each start takes one message, and a's next queues behind c."""
    queue = keyed_chains(concurrency=2)
    started = [queue.start(chain=16) for _ in range(2)]
    assert [chain_of(job) for job in started if job] == [[0], [2]]
    queue.lanes.finished(queue.job(0))
    assert [chain_of(job) for job in iter(lambda: queue.start(chain=16), None)] == [[3]]
    queue.lanes.finished(queue.job(2))
    queue.lanes.finished(queue.job(3))  # slots for every waiting lane (a and b) now
    assert [chain_of(job) for job in iter(lambda: queue.start(chain=16), None)] == [
        [1, 5, 6], [4]]
