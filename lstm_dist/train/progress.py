"""Training progress on the driver's terminal: a line when the workers are ready, one line per epoch, from
rank 0 of the training loop.

The workers run in other processes (other machines on a cluster), so rank 0 sends its progress over a
Ray queue (an actor the driver creates; `ray.util.queue`): a few step updates a second, then the epoch's
line. On a terminal the driver draws a `rich` bar per epoch (batches/s, loss, ETA) that the epoch's line
replaces when it ends; in a file or a pipe it prints the epoch's line only. A loop started without a
queue (a tune trial) prints its epoch lines itself, as before.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

UPDATE_EVERY_S = 0.5  # step updates from rank 0 at most this often: a queue put is a round trip to an actor


class StepReporter:
    """Rank 0's side: `step(i, loss)` after each optimizer step (throttled), `epoch(line)` after each epoch."""

    def __init__(self, queue: Any, *, epoch: int, epochs: int, steps: int) -> None:
        self.queue, self.epoch, self.epochs, self.steps = queue, epoch, epochs, steps
        self.sent = 0.0

    def step(self, step: int, loss: Any) -> None:
        now = time.monotonic()
        if now - self.sent < UPDATE_EVERY_S and step < self.steps:
            return
        self.sent = now
        # float(loss) waits for the device: only here, a few times a second, not at every step.
        self.queue.put({"epoch": self.epoch, "epochs": self.epochs, "step": step, "steps": self.steps,
                        "loss": float(loss)})  # fmt: skip

    def done(self, line: str) -> None:
        self.queue.put({"epoch": self.epoch, "line": line})


def report_ready(queue: Any, what: str) -> None:
    """Rank 0, once its model, data and state are set up, before the first epoch: the driver prints `what`
    with the seconds since the fit began (Ray Train's start-up: its actors, worker processes, torch)."""
    queue.put({"epoch": 0, "ready": what})


@contextmanager
def driver_progress(label: str, *, local: bool = False) -> Iterator[Any]:
    """The queue for rank 0's progress (pass it to the workers), drawn on this process's terminal while
    the block runs; every message sent before the block ends is shown. `local`: the loop runs in this
    process (train.backend=local), so a plain thread-safe queue carries it."""
    import queue as queues

    from ray.util.queue import Empty, Queue

    queue = queues.Queue() if local else Queue(actor_options={"num_cpus": 0})
    view = _Bars(label) if sys.stdout.isatty() else _Lines()
    stop = threading.Event()
    started = time.monotonic()

    def pump() -> None:
        while True:
            try:
                message = queue.get(timeout=0.2)
                if "ready" in message:
                    ready = f"[{label}] {message['ready']}: ready after {time.monotonic() - started:.1f} s"
                    message = {"epoch": 0, "line": ready}
                view.show(message)
            except (Empty, queues.Empty):
                if stop.is_set():
                    return
            except Exception:  # noqa: BLE001 - the queue's actor is gone (Ray shut down): nothing more to show
                return

    thread = threading.Thread(target=pump, name="train-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=10)
        view.close()
        if not local:
            queue.shutdown()  # the queue's actor


class _Lines:
    """Not a terminal: the epoch lines only."""

    def show(self, message: dict[str, Any]) -> None:
        if "line" in message:
            print(message["line"], flush=True)

    def close(self) -> None:
        pass


class _Bars:
    """A terminal: a live bar for the running epoch, replaced by the epoch's line when it ends."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.label, self.tasks = label, {}
        self.bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} batches/s  loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bars.start()
        # Until rank 0 says it is ready (Ray Train's start-up takes seconds): a pulsing bar, replaced by that line.
        self.tasks[0] = self.bars.add_task(f"[{label}] starting Ray Train's workers", total=None, rate="-", loss="-")

    def show(self, message: dict[str, Any]) -> None:
        epoch = message["epoch"]
        if "line" in message:
            if epoch in self.tasks:
                self.bars.remove_task(self.tasks.pop(epoch))
            self.bars.console.print(message["line"], markup=False, highlight=False)
            return
        if epoch not in self.tasks:
            self.tasks[epoch] = self.bars.add_task(
                f"[{self.label}] epoch {epoch}/{message['epochs']}", total=message["steps"], rate="-", loss="-"
            )
        task = self.tasks[epoch]
        self.bars.update(task, completed=message["step"], loss=f"{message['loss']:.4f}")
        speed = next(t.speed for t in self.bars.tasks if t.id == task)
        self.bars.update(task, rate=f"{speed:.1f}" if speed else "-")

    def close(self) -> None:
        self.bars.stop()
