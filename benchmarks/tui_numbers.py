"""Issue 8's numbers for the studio (the Textual app), measured and printed as a table.

    python benchmarks/tui_numbers.py                       # all four, ~2 min
    python benchmarks/tui_numbers.py --only open,keys      # startup | open | keys | rss
    python benchmarks/tui_numbers.py --runs 7 --stream-sec 60

Every figure runs in a fresh workspace (a temporary MLXLORA_HOME) and a fresh process, so
imports, caches and memory are the app's own. Medians are quoted; the load average (`uptime`)
is printed with the table because this machine's 2 cores are shared.

* **startup**: a tmux session (120x40) runs a shell; `python -m mlxlora tui` is typed into it
  and the clock starts when the keys are sent. `tmux capture-pane -p` is polled until the tab
  bar (all six tab titles) is on the pane: that is the first screen. Median of `--runs`
  launches (one untimed launch first warms the OS file cache). Over target, the slowest
  imports (`python -X importtime`) are listed.
* **open 100k**: a run directory holds 100,000 `step` events plus an eval every 200 steps, an
  epoch end and a checkpoint every 10,000 and the samples (22 MB, written with `EventWriter`),
  and two small finished runs. A Pilot app (`MlxloraApp(initial="runs")`, 160x48) opens; when
  the table lists the big run its row is selected; the clock stops at the first frame the
  screen composes after the LossChart rendered the run's 100,000 points (the compositor's
  update handed to the driver, `App._display`, encoded for a terminal as a real driver
  would). Measured from before the app is built: the app's own start in Pilot is included and
  printed apart (`mounted`).
* **keys**: a writer process appends 1,000 step events/s (in 10 ms batches, an eval every
  200 steps) to a run whose `.lock` holds the writer's pid, so the app shows it running. A
  Pilot app (Runs tab, 160x48) first visits every tab once (System starts `mlxlora doctor`),
  then presses keys like a person (100-200 ms apart): 1..6 and 3 (switch tabs), and down/up in
  the runs table. Latency = from handing the key event to the app's driver queue (what a
  terminal's input thread does) to the first frame composed and encoded in which the key's
  effect holds (the tab's pane is on screen; the table's cursor is on the row). p50/p95.
* **rss**: VmRSS of the app's process from /proc/self/status (Pilot's harness included, a
  few MB): at the end of `--stream-sec` seconds of the keys run (the run streams the whole
  time), and with the 100,000-step run opened (at the end of open 100k). VmHWM is the peak.

The app never imports mlx (each child checks `sys.modules`), so MLX's kernel cache plays no
part in these figures; it only affects the trainer's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlxlora import config, runs  # noqa: E402
from mlxlora.events import (  # noqa: E402
    Checkpoint,
    EpochEnd,
    Eval,
    EventWriter,
    RunFinished,
    RunStarted,
    Sample,
    Step,
)

TARGETS = {"startup": 1.5, "open": 1.0, "keys": 0.100, "rss": 150.0}
BIG_STEPS = 100_000
STEPS_PER_EPOCH = 10_000
EVAL_EVERY = 200
TAB_TITLES = ("1 Datasets", "2 Train", "3 Runs", "4 Compare", "5 Playground", "6 System")
T0 = 1_750_000_000.0


# --- run directories --------------------------------------------------------------------


def new_run(name: str, total: int) -> tuple[Path, EventWriter]:
    """A run directory in the workspace with its config and an open events writer."""
    path = runs.runs_root() / f"{name}-20250615-000000"
    path.mkdir(parents=True)
    cfg = config.load(ROOT / "configs" / "tiny.yaml", [f"name={name}"])
    runs.RunPaths(path).config.write_text(cfg.to_yaml(), encoding="utf-8")
    writer = EventWriter(runs.RunPaths(path).events)
    writer.emit(
        RunStarted(
            run_dir=str(path),
            model="builtin:tiny",
            backend="mlx",
            device="cpu",
            train_records=40_000,
            val_records=400,
            total_steps=total,
            steps_per_epoch=STEPS_PER_EPOCH,
            trainable_params=20480,
            total_params=1_000_000,
            estimated_peak_gb=0.4,
            time=T0,
        )
    )
    writer.emit(Sample(step=0, when="before", prompt="What is 2+2?", answer="blue", time=T0))
    return path, writer


def loss_at(step: int) -> float:
    return 3.0 * math.exp(-step / 20_000) + 0.5 + 0.05 * math.sin(step) + random.random() * 0.1


def emit_step(writer: EventWriter, path: Path, step: int, at: float) -> None:
    """One step event, with an eval, epoch end and checkpoint where a real run has them."""
    loss = loss_at(step)
    writer.emit(
        Step(
            step=step,
            epoch=step / STEPS_PER_EPOCH,
            loss=loss,
            lr=2e-4 * (1 - step / (2 * BIG_STEPS)),
            tokens=400 + step % 97,
            tokens_per_sec=1234.5 + random.random(),
            peak_memory_gb=0.25 + random.random() * 0.01,
            grad_norm=1.0 + random.random(),
            padding_fraction=0.1 * random.random(),
            loss_ema=loss * 0.98,
            time=at,
        )
    )
    if step % EVAL_EVERY == 0:
        val = loss_at(step) + 0.2
        writer.emit(Eval(step, step / STEPS_PER_EPOCH, val, math.exp(val), False, time=at))
    if step % STEPS_PER_EPOCH == 0:
        writer.emit(EpochEnd(epoch=step // STEPS_PER_EPOCH, step=step, train_loss=loss, time=at))
        writer.emit(Checkpoint(step=step, path=str(path / "adapters"), time=at))


def write_finished(name: str, steps: int, started: float = T0) -> Path:
    path, writer = new_run(name, steps)
    with writer:
        for step in range(1, steps + 1):
            emit_step(writer, path, step, started + step)
        writer.emit(Sample(step=steps, when="after", prompt="What is 2+2?", answer="4"))
        writer.emit(RunFinished(step=steps, best_val_loss=0.7, best_step=steps, elapsed_sec=9.0))
    return path


def stream(name: str, rate: int, batch_sec: float = 0.01) -> None:
    """Be a training process: hold the run's lock and append `rate` step events a second
    until SIGTERM."""
    path, writer = new_run(name, 10_000_000)
    runs.RunPaths(path).lock.write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    step, start = 0, time.monotonic()
    try:
        while True:
            due = int((time.monotonic() - start) * rate)
            while step < due:
                step += 1
                emit_step(writer, path, step, time.time())
            time.sleep(batch_sec)
    finally:
        runs.RunPaths(path).lock.unlink(missing_ok=True)


# --- measuring inside a Pilot app -------------------------------------------------------


class Frames:
    """Watches the frames the app composes: each screen update handed to the driver is
    encoded for a terminal (Pilot's headless driver skips that) and `check()` is asked
    whether what a key or a load should change is on screen now."""

    def __init__(self, app):
        self.app, self.waiting = app, None
        display = app._display

        def timed_display(screen, update):
            display(screen, update)
            if update is not None and hasattr(update, "render_segments"):
                update.render_segments(app.console)
            if self.waiting and self.waiting[0]():
                self.waiting[1].set_result(time.perf_counter())
                self.waiting = None

        app._display = timed_display

    async def until(self, check, timeout: float = 30.0) -> float:
        """perf_counter() of the first frame composed while `check()` holds."""
        future = asyncio.get_running_loop().create_future()
        self.waiting = (check, future)
        self.app.screen.refresh()  # a frame even when nothing else changes
        return await asyncio.wait_for(future, timeout)


def rss_mb() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def framework_imported() -> list[str]:
    return sorted(m for m in ("mlx", "mlx_lm", "torch", "transformers") if m in sys.modules)


async def open_big(big: Path) -> dict:
    """Open the app on Runs with the 100,000-step run; seconds until its chart is drawn."""
    from textual.widgets import DataTable

    from mlxlora.tui.app import MlxloraApp
    from mlxlora.tui.widgets.loss_chart import LossChart

    start = time.perf_counter()
    app = MlxloraApp(initial="runs")
    async with app.run_test(size=(160, 48)):
        mounted = time.perf_counter()
        frames = Frames(app)
        chart = app.query_one("#run-chart", LossChart)
        drawn = {"points": 0}
        draw = chart._draw

        def counted_draw():  # plotted, then turned into the lines of the next frame
            drawn["points"] = max((len(s.x) for s in chart.series), default=0)
            return draw()

        chart._draw = counted_draw
        table = app.query_one("#runs-table", DataTable)
        while str(big) not in {str(r.key.value) for r in table.ordered_rows}:
            await asyncio.sleep(0.01)  # not pilot.pause: that visits every widget
        table.move_cursor(row=table.get_row_index(str(big)))
        done = await frames.until(lambda: drawn["points"] == BIG_STEPS)
        return {
            "open_sec": done - start,
            "mounted_sec": mounted - start,
            **rss_mb(),
            "frameworks": framework_imported(),
        }


async def press_keys(stream_sec: float) -> dict:
    """Keys pressed while a run streams; latencies, and memory at the end."""
    from textual import events
    from textual.widgets import DataTable, TabbedContent

    from mlxlora.tui.app import TABS, MlxloraApp

    app = MlxloraApp(initial="runs")
    start = time.monotonic()
    async with app.run_test(size=(160, 48)) as pilot:
        frames = Frames(app)
        tabs, table = app.query_one(TabbedContent), app.query_one("#runs-table", DataTable)
        while table.row_count < 4:
            await asyncio.sleep(0.05)
        for i in (*range(1, len(TABS) + 1), 3):  # every tab once (System asks doctor)
            await pilot.press(str(i))
        await pilot.pause(3.0)

        def shows(tab: str):
            return lambda: app.query_one(f"#{tab}-tab").region.area > 0 and tabs.active == tab

        def on_row(row: int):
            return lambda: table.cursor_row == row and table.has_focus

        latencies, by_key, rng = [], {}, random.Random(0)
        while time.monotonic() - start < stream_sec:
            for key, check in _key_plan(TABS, shows, on_row):
                t0 = time.perf_counter()
                app._driver.send_message(events.Key(key, key if len(key) == 1 else None))
                latencies.append(await frames.until(check) - t0)
                by_key.setdefault(key, []).append(latencies[-1])
                await asyncio.sleep(rng.uniform(0.1, 0.2))
        await pilot.pause(max(0.0, stream_sec - (time.monotonic() - start)))
        return {
            "latencies": latencies,
            "p50_by_key": {k: statistics.median(v) for k, v in by_key.items()},
            "p95_by_key": {k: percentile(v, 0.95) for k, v in by_key.items()},
            "streamed_sec": time.monotonic() - start,
            **rss_mb(),
            "frameworks": framework_imported(),
        }


def _key_plan(tabs, shows, on_row):
    """One round of keys: every tab by number and back to Runs, then the table's cursor."""
    plan = [(str(i), shows(tab)) for i, (tab, _, _) in enumerate(tabs, 1)]
    plan.append(("3", shows("runs")))
    plan += [("down", on_row(1)), ("down", on_row(2)), ("up", on_row(1)), ("up", on_row(0))]
    return plan


# --- the figures, each in a fresh process and workspace ---------------------------------


def child(kind: str, stream_sec: float) -> dict:
    """Run one measurement in a fresh Python (imports and memory are the app's own)."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--stream-sec", str(stream_sec)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_open() -> dict:
    for i, name in enumerate(("small-a", "small-b")):
        write_finished(name, 300, started=T0 + 10 + i)
    big = write_finished("big", BIG_STEPS)
    return asyncio.run(open_big(big))


def child_keys(stream_sec: float) -> dict:
    for i, name in enumerate(("done-a", "done-b", "done-c")):
        write_finished(name, 300, started=T0 + i)
    writer = subprocess.Popen(
        [sys.executable, __file__, "--child", "stream"], env=os.environ | {"PYTHONPATH": str(ROOT)}
    )
    try:
        return asyncio.run(press_keys(stream_sec))
    finally:
        writer.terminate()
        writer.wait()


def startup(n: int) -> dict:
    """Median seconds from typing `python -m mlxlora tui` in tmux to the tab bar on screen."""
    tmux = ["tmux", "-L", f"tui-bench-{os.getpid()}"]  # a server of our own, kept up throughout
    subprocess.run([*tmux, "new-session", "-d", "-s", "keeper", "sleep", "600"], check=True)
    try:
        times = [_launch_once(tmux, f"launch-{i}") for i in range(n + 1)][1:]
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    return {"startup_sec": statistics.median(times), "all": times}


def _launch_once(tmux: list[str], session: str) -> float:
    env = f"MLXLORA_HOME={os.environ['MLXLORA_HOME']} PYTHONPATH={ROOT}"
    shell = ["env", "-i", f"PATH={os.environ['PATH']}", "TERM=xterm-256color", "bash", "--norc"]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "40", *shell], check=True
    )
    try:
        time.sleep(0.5)  # the shell is up
        command = f"{env} {sys.executable} -m mlxlora tui"
        start = time.perf_counter()
        subprocess.run([*tmux, "send-keys", "-t", session, command, "Enter"], check=True)
        while time.perf_counter() - start < 30:
            pane = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if all(title in pane for title in TAB_TITLES):
                return time.perf_counter() - start
            time.sleep(0.005)
        raise RuntimeError(f"no tab bar after 30 s:\n{pane}")
    finally:
        subprocess.run([*tmux, "kill-session", "-t", session], check=False)


def slowest_imports(top: int = 12) -> list[str]:
    """The imports of `mlxlora tui` that take longest (cumulative µs), from -X importtime."""
    code = "import mlxlora.cli, mlxlora.tui.app"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    ).stderr
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    return [f"{us / 1000:8.1f} ms {name}" for us, name in sorted(rows, reverse=True)[:top]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(results: dict) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average (1/5/15 min): {' '.join(load)}; cores: {os.cpu_count()}")
    print(f"{'figure':<34}{'target':>12}{'measured':>14}  result")
    for figure, target, measured, unit in _rows(results):
        verdict = "pass" if measured < target else "FAIL"
        print(f"{figure:<34}{target:>10.3g} {unit:<2}{measured:>12.3f} {unit:<2} {verdict}")
    for key in ("open", "keys"):
        if key in results:
            found = results[key]["frameworks"]
            print(f"{key}: frameworks imported by the app: {', '.join(found) or 'none'}")
    print("MLX kernel cache: irrelevant to these figures; the app never imports mlx.")
    if "startup" in results:
        print("startup runs (s):", " ".join(f"{t:.2f}" for t in results["startup"]["all"]))
    if "keys" in results:
        keys = results["keys"]
        p50, worst = statistics.median(keys["latencies"]), max(keys["latencies"])
        print(f"keys: {len(keys['latencies'])} presses, p50 {p50 * 1000:.1f} ms, max ", end="")
        print(f"{worst * 1000:.1f} ms, during {keys['streamed_sec']:.0f} s of streaming")
        by_key = {k: f"{v * 1000:.0f}" for k, v in keys["p50_by_key"].items()}
        print("keys: p50 ms by key:", by_key)
    if "open" in results:
        print(f"open 100k: app mounted in Pilot after {results['open']['mounted_sec']:.3f} s")


def _rows(results: dict):
    if "startup" in results:
        yield (
            "startup to first screen (median)",
            TARGETS["startup"],
            results["startup"]["startup_sec"],
            "s",
        )
    if "open" in results:
        yield "open 100k-step run, chart drawn", TARGETS["open"], results["open"]["open_sec"], "s"
    if "keys" in results:
        latencies = results["keys"]["latencies"]
        yield (
            "key to screen p95 at 1,000 ev/s",
            TARGETS["keys"] * 1000,
            percentile(latencies, 0.95) * 1000,
            "ms",
        )
    if "rss" in results:
        for label, key in (("streaming", "keys"), ("100k run open", "open")):
            if key in results["rss"]:
                yield f"app RSS, {label}", TARGETS["rss"], results["rss"][key]["VmRSS"], "MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="startup,open,keys,rss")
    parser.add_argument("--runs", type=int, default=5, help="startup launches (median)")
    parser.add_argument("--stream-sec", type=float, default=60.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child_main(args.child, args.stream_sec)
    wanted = set(args.only.split(","))
    kinds = [
        k
        for k in ("startup", "open", "keys")
        if k in wanted or (k != "startup" and "rss" in wanted)
    ]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        for kind in kinds:
            os.environ["MLXLORA_HOME"] = str(Path(tmp) / kind)  # a fresh workspace each
            Path(tmp, kind).mkdir()
            print(f"measuring {kind} ...", flush=True)
            results[kind] = (
                startup(args.runs) if kind == "startup" else child(kind, args.stream_sec)
            )
    if "startup" in results and results["startup"]["startup_sec"] > TARGETS["startup"]:
        print("slowest imports (cumulative):", *slowest_imports(), sep="\n  ")
    if "rss" in wanted:
        results["rss"] = {k: results[k] for k in ("keys", "open") if k in results}
    report({k: v for k, v in results.items() if k in wanted})


def _child_main(kind: str, stream_sec: float) -> None:
    if kind == "stream":
        return stream("live", 1000)
    result = child_open() if kind == "open" else child_keys(stream_sec)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
