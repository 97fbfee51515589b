"""consumer.commands.lag: the `consumer lag` table and JSON, without a broker."""

from __future__ import annotations

import json

import pytest

from consumer.cli import main
from consumer.commands.lag import lag_rows, render_json, render_table
from consumer.errors import EXIT_CONFIG
from consumer.kafka.protocol import COMMIT_MARKER, GroupPosition

POSITIONS = [
    GroupPosition("orders", 0, 41_000, COMMIT_MARKER, 0, 41_250),
    GroupPosition("orders", 1, None, None, 100, 2_000),
    GroupPosition("orders", 2, 7, "", 0, 9),
]


def test_table_shows_committed_end_and_lag_and_flags_foreign_commits() -> None:
    text = render_table(lag_rows(POSITIONS), with_store=False)
    assert text.splitlines() == [
        "TOPIC   PARTITION  COMMITTED  END     LAG",
        "orders  0          41,000     41,250  250",
        "orders  1          -          2,000   1,900",
        "orders  2          7*         9       2",
        "* committed without checkpoint-consumer's marker: moved by another tool",
    ]


def test_table_puts_the_stores_checkpoint_beside_kafkas() -> None:
    rows = lag_rows(POSITIONS[:1], {("orders", 0): 41_100})
    assert render_table(rows, with_store=True).splitlines()[1].endswith("250  41,100")


def test_json_has_one_entry_per_partition_and_the_total() -> None:
    data = json.loads(render_json("payments", lag_rows(POSITIONS)))
    assert data["group"] == "payments"
    assert data["total_lag"] == 250 + 1_900 + 2
    assert data["partitions"][1] == {"topic": "orders", "partition": 1, "committed": None,
                                     "start": 100, "end": 2_000, "lag": 1_900, "ours": True,
                                     "store": None}


def test_bootstrap_servers_without_a_group_is_a_usage_error(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lag", "--bootstrap-servers", "127.0.0.1:1"]) == EXIT_CONFIG
    assert "--group: required with --bootstrap-servers" in capsys.readouterr().err
