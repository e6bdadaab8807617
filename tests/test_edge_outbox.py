"""The outbox against real SQLite files: numbering, acknowledgement, bound, full disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.errors import OutboxFullError
from edge.outbox import Outbox


def pred(i: int, camera: str = "c1") -> dict[str, object]:
    return {"ts": 1000.0 + i, "camera": camera, "label": "cat", "confidence": 0.9, "model_version": "m1"}


def test_seq_strictly_increases_and_survives_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    assert ob.append([pred(1), pred(2)]) == [1, 2]
    assert ob.append([pred(3)]) == [3]
    assert ob.ack(1, 3) == 3
    assert ob.backlog == 0
    ob.close()
    # Everything acknowledged and deleted: numbering must still not restart at 1.
    ob2 = Outbox(tmp_path / "o.db")
    assert ob2.append([pred(4)]) == [4]
    assert ob2.last_seq == 4
    assert [s for s, _ in ob2.pending()] == [4]
    assert ob2.pending()[0][1]["seq"] == 4
    ob2.close()


def test_wal_mode_and_pending_order(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.append([pred(i) for i in range(10)])
    mode = sqlite3.connect(tmp_path / "o.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    rows = ob.pending(after_seq=3, limit=4)
    assert [s for s, _ in rows] == [4, 5, 6, 7]
    ob.ack(4, 5)
    assert [s for s, _ in ob.pending(limit=100)] == [1, 2, 3, 6, 7, 8, 9, 10]
    assert ob.backlog == 8


def test_bound_evicts_oldest_and_counts(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_rows=100)
    ob.append([pred(i) for i in range(80)])
    ob.append([pred(i) for i in range(50)])
    assert ob.backlog == 100
    assert ob.evicted_total == 30
    assert ob.pending(limit=1)[0][0] == 31  # the 30 oldest went
    ob.close()
    assert Outbox(tmp_path / "o.db", max_rows=100).evicted_total == 30  # persisted


def test_full_database_is_a_clear_counted_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_db_mb=0.1)  # SQLite's own size cap: a real SQLITE_FULL
    committed: list[int] = []
    with pytest.raises(OutboxFullError, match="full"):
        for i in range(10_000):
            big = dict(pred(i), probs={"cat": 0.5, "dog": 0.5}, flags=["x" * 200])
            committed += ob.append([big])
    assert ob.write_errors == 1
    assert ob.last_error and "max_db_mb" in ob.last_error
    assert committed and ob.backlog == len(committed)
    assert [s for s, _ in ob.pending(limit=100_000)] == committed
    # No seq was consumed by the failed write; acknowledging frees room and writing resumes.
    ob.ack(committed[0], committed[-1])
    assert ob.append([pred(1)]) == [committed[-1] + 1]


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    from edge.errors import OutboxError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(blocker / "sub" / "o.db")


def test_writer_groups_commits_numbers_in_order_and_commits_all_on_stop(tmp_path: Path) -> None:
    from edge.events import RecentErrors
    from edge.writer import OutboxWriter

    ob = Outbox(tmp_path / "o.db")
    committed: list[int] = []
    w = OutboxWriter(ob, RecentErrors(), on_commit=committed.append)
    w.start()
    batches = [[pred(i * 3 + k) for k in range(3)] for i in range(200)]
    for b in batches:
        w.submit(b)
    assert w.flush(10)
    assert [p["seq"] for b in batches for p in b] == list(range(1, 601))
    assert sum(committed) == 600 and w.commits == len(committed) <= 200
    w.submit([pred(1000)])
    w.stop()  # queued work is committed before the thread ends
    assert ob.last_seq == 601 and ob.backlog == 601


def test_a_lingering_writer_joins_a_burst_into_one_commit_and_stop_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    """The linger is what keeps the box's model at full speed (one wake of the writer, one
    fsync, per group instead of per frame); a stop must not sit it out, and nothing queued is
    left behind."""
    from edge.events import RecentErrors
    from edge.writer import OutboxWriter

    ob = Outbox(tmp_path / "o.db")
    w = OutboxWriter(ob, RecentErrors(), linger_s=3.0)
    w.start()
    batches = [[pred(i)] for i in range(50)]
    for b in batches:  # a burst far shorter than the linger
        w.submit(b)
    assert w.flush(20)
    assert w.commits == 1 and [b[0]["seq"] for b in batches] == list(range(1, 51))
    w2 = OutboxWriter(ob, RecentErrors(), linger_s=600.0)
    w2.start()
    w2.submit([pred(99)])
    w2.stop(timeout=30)  # a linger of 10 minutes would outlast this join
    assert w2._thread is not None and not w2._thread.is_alive()
    assert ob.last_seq == 51 and ob.backlog == 51


def test_writer_counts_what_a_full_disk_loses(tmp_path: Path) -> None:
    from edge.events import RecentErrors
    from edge.writer import OutboxWriter

    ob = Outbox(tmp_path / "o.db", max_db_mb=0.05)
    errors = RecentErrors()
    w = OutboxWriter(ob, errors)
    w.start()
    for i in range(400):
        w.submit([dict(pred(i), flags=["y" * 500])])
    w.stop()
    assert w.lost > 0 and ob.write_errors > 0
    assert ob.backlog + w.lost == 400
    assert "full" in errors.list()[0]["message"]


def test_rows_an_older_build_wrote_with_nan_still_come_out(tmp_path: Path) -> None:
    """Before orjson the rows were json.dumps' text, which spells a NaN confidence ``NaN``
    (orjson refuses to read it); such a row must not block the queue: the publisher drops it."""
    ob = Outbox(tmp_path / "o.db")
    ob.append([pred(1)])
    with sqlite3.connect(tmp_path / "o.db") as c:
        c.execute(
            "INSERT INTO predictions(seq, ts, camera, body) VALUES(2, 1002.0, 'c1', ?)",
            ('{"ts":1002.0,"camera":"c1","label":"cat","confidence":NaN,"model_version":"m1","seq":2}',),
        )
    rows = ob.pending()
    assert [s for s, _ in rows] == [1, 2]
    assert rows[0][1] == pred(1) | {"seq": 1}
    assert rows[1][1]["confidence"] != rows[1][1]["confidence"]  # NaN, for the publisher to refuse
    ob.close()
