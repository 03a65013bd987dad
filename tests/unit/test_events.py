"""Events round-trip through JSONL and a follower sees a live file grow."""

from __future__ import annotations

import json
import threading
import time

from mlxlora.events import EventWriter, RunFinished, Step, follow, parse, read_events


def step(n):
    return Step(
        step=n,
        epoch=0.1 * n,
        loss=1.0 / n,
        lr=1e-4,
        tokens=10,
        tokens_per_sec=5.0,
        peak_memory_gb=0.1,
    )


def test_round_trip_and_garbage_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        w.emit(step(1))
    with open(path, "a") as f:
        f.write('not json\n{"type": "unknown"}\n{"type": "step", "step"')  # torn tail
    events = read_events(path)
    assert len(events) == 1 and events[0].step == 1 and events[0].loss == 1.0
    assert parse("") is None


def test_follow_sees_appended_events_until_finish(tmp_path):
    path = tmp_path / "events.jsonl"
    seen = []

    def reader():
        seen.extend(follow(path, poll=0.01))

    t = threading.Thread(target=reader)
    t.start()
    with EventWriter(path) as w:
        for n in range(1, 4):
            w.emit(step(n))
            time.sleep(0.02)
        w.emit(
            RunFinished(
                step=3, train_loss_ema=0.3, best_val_loss=None, best_step=None, elapsed_sec=1.0
            )
        )
    t.join(timeout=5)
    assert [type(e).__name__ for e in seen] == ["Step", "Step", "Step", "RunFinished"]


def test_tail_reads_only_what_was_appended(tmp_path):
    from mlxlora.event_tail import EventTail

    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # no file yet
    with EventWriter(path) as w:
        w.emit(step(1))
    assert [e.step for e in tail.read()] == [1]
    assert tail.read() == []
    line = json.dumps(step(2).to_dict())
    with open(path, "a") as f:
        f.write("{not json}\n" + line[:20])  # a corrupt line, then half a line
    assert tail.read() == []
    with open(path, "a") as f:
        f.write(line[20:] + "\n")
    assert [e.step for e in tail.read()] == [2]
    path.write_text(line + "\n")  # replaced by a shorter file: read from the start again
    assert [e.step for e in tail.read()] == [2]


def test_events_of_older_runs_still_parse():
    # before train_loss_last_epoch / train_loss_ema / loss_ema, a run wrote these lines
    finished = parse(
        '{"type": "run_finished", "time": 1.0, "step": 81, "final_train_loss": 0.5852, '
        '"best_val_loss": 0.1726, "best_step": 81, "elapsed_sec": 12.5, "stopped": false}'
    )
    assert isinstance(finished, RunFinished) and finished.best_val_loss == 0.1726
    assert finished.train_loss_last_epoch is None and finished.train_loss_ema is None
    old_step = step(2).to_dict()
    del old_step["loss_ema"]
    assert parse(json.dumps(old_step)).loss_ema is None
