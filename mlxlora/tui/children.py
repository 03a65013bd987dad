"""Child processes of the CLI (`python -m mlxlora ...`) started by the app: whatever needs a
model or a framework runs there, never in the app. Their output is read as JSON; a child runs
in its own process group so that cancelling it also stops anything it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import weakref
from collections import deque
from collections.abc import AsyncIterator

CLI = (sys.executable, "-m", "mlxlora")
LINE_LIMIT = 16 * 2**20  # a `done` line carries the whole answer
STDERR_LINES = 20  # kept for the error line; progress bars beyond that are dropped
_LIVE: weakref.WeakSet[Child] = weakref.WeakSet()  # every child started, until collected


class Child:
    """A running `mlxlora` command. Start with `await Child.start(*args)`."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        _LIVE.add(self)
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        # Drained all along: a child blocked on a full stderr pipe would never finish.
        self._stderr_read = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(
        cls, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> Child:
        """Start `mlxlora ARGS`; `input`, if given, goes to its stdin, which is then closed;
        `env`: variables set for the child over the app's environment."""
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            env={**os.environ, **env} if env else None,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, see cancel()
            limit=LINE_LIMIT,
        )
        child = cls(process)
        if input is not None:
            try:
                await child._send(input)
            except asyncio.CancelledError:
                await child.stop()  # cancelled before the caller holds it: stop it here
                raise
        return child

    async def _send(self, text: str) -> None:
        stdin = self.process.stdin
        try:
            stdin.write(text.encode("utf-8"))
            await stdin.drain()
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited before reading: its error line tells why

    async def _read_stderr(self) -> None:
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr.append(line)

    async def json_lines(self) -> AsyncIterator[dict]:
        """Each JSON object the child prints on a line of its own, as it comes."""
        async for raw in self.process.stdout:
            try:
                found = json.loads(raw)
            except ValueError:
                continue  # not a line of the stream (a stray print)
            if isinstance(found, dict):
                yield found

    async def json(self):
        """The child's whole output, parsed as one JSON document (ValueError if it is not)."""
        return json.loads(await self.process.stdout.read())

    async def wait(self) -> int:
        """Its exit code, once it has exited and its stderr is read."""
        code = await self.process.wait()
        await self._stderr_read
        return code

    def error_line(self) -> str:
        """What went wrong, in one line: the CLI's `mlxlora: error: ...` line if it printed one."""
        lines = list(self._stderr)
        for line in reversed(lines):
            if line.startswith("mlxlora: "):
                return line.removeprefix("mlxlora: error: ").removeprefix("mlxlora: ")
        code = self.process.returncode
        return lines[-1] if lines else f"exited with code {code}"

    def cancel(self) -> None:
        """Ask the child and everything it started to stop (SIGTERM to its process group)."""
        self._signal(signal.SIGTERM)

    async def stop(self, grace: float = 3.0) -> None:
        """Cancel, wait up to `grace` seconds, then kill; returns once it is gone."""
        if self.process.returncode is None:
            self.cancel()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except asyncio.TimeoutError:
                self._signal(signal.SIGKILL)
        await self.wait()

    @staticmethod
    def cancel_all() -> None:
        """SIGTERM every child still running. The app calls it as it closes: a worker's own
        `stop()` in its `finally` may never run once the app's event loop has ended."""
        for child in list(_LIVE):
            child.cancel()

    def _signal(self, sig: int) -> None:
        if self.process.returncode is not None:
            return  # reaped: its pid may belong to someone else by now
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # already gone
