"""The stream's silence clock: expires after the limit of silence, or when one paused write lasts a limit."""

from __future__ import annotations

import asyncio

import pytest

from tensorwall_proxy.clock import SilenceClock


async def _sleeper(clock_box: list[SilenceClock], limit: float, script: list[tuple[str, float]]) -> str:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    clock = SilenceClock(loop, task, limit)
    clock_box.append(clock)
    try:
        for action, seconds in script:
            if action == "pause":
                clock.paused = True
            elif action == "resume":
                clock.paused = False
                clock.heard()
            elif action == "heard":
                clock.heard()
            elif action == "change":
                clock.change(seconds)
                continue
            await asyncio.sleep(seconds)
        return "finished"
    except asyncio.CancelledError:
        if clock.expired:
            task.uncancel()
            return "stalled" if clock.stalled else "expired"
        raise
    finally:
        clock.stop()


@pytest.mark.parametrize(("limit", "script", "outcome"), [
    (0.05, [("wait", 0.2)], "expired"),
    (0.1, [("heard", 0.06), ("heard", 0.06), ("heard", 0.06)], "finished"),  # events keep it alive
    (0.1, [("pause", 0.05), ("resume", 0.02)], "finished"),  # a slow client write is not silence
    (0.05, [("heard", 0.04), ("pause", 0.03), ("resume", 0.03)], "finished"),  # nor one over the due time
    (0.05, [("pause", 0.3), ("resume", 0.02)], "stalled"),  # a write blocked a whole limit: client stalled
    (0.05, [("pause", 0.07), ("resume", 0.2)], "expired"),  # ...but silence after it is
    (5.0, [("change", 0.05), ("wait", 0.3)], "expired"),  # first_byte 5 s, then idle 0.05 s
])
def test_silence_clock(limit: float, script: list[tuple[str, float]], outcome: str) -> None:
    box: list[SilenceClock] = []
    result = asyncio.run(asyncio.wait_for(_sleeper(box, limit, script), 3))
    assert result == outcome
