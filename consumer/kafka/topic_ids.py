"""Topic ids, learnt at start and again whenever partitions are assigned: a topic deleted and
recreated under its name gets a new id, which ``coordinates`` dedup keys and checkpoint rows
must see.

Runs on the poll thread (at start, and inside the assignment callback); blocks for one admin
request, up to the source's timeout. Never raises for the broker: when it cannot say, the ids
known so far stay and a warning is logged (logger ``consumer.topic_ids``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from consumer.errors import KafkaError
from consumer.kafka.protocol import Source

log = logging.getLogger("consumer.topic_ids")


def learn_topic_ids(source: Source, known: dict[str, str], topics: Iterable[str]) -> None:
    """Update ``known`` (the dict the key functions read) with the topics' ids now. On the
    polling thread (the admin client is a client of its own). When the broker cannot say, the
    ids known so far stay, and the reason is logged."""
    wanted = sorted(set(topics))
    if not wanted:
        return
    try:
        known.update(source.topic_ids(wanted))
    except KafkaError as error:
        log.warning("could not learn the topic ids of %s (%s); using the ids known so far",
                    ", ".join(wanted), error)
