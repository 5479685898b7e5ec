"""``token_steps``: each token goes out before the next is pulled from the engine;
only the token marked last waits, for the end that follows it."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from squeezer.server.streaming import token_steps
from squeezer.tasks.generate import Finish, TextDelta, TextDone


async def _steps(events: AsyncGenerator[TextDelta | TextDone, None]) -> list[tuple[str, bool]]:
    return [(delta.text, done is not None) async for delta, done in token_steps(events)]


async def test_each_token_goes_out_before_the_next_is_sampled() -> None:
    pulled: list[int] = []
    sent: list[tuple[int, int]] = []

    async def events() -> AsyncGenerator[TextDelta | TextDone, None]:
        for i in range(3):
            pulled.append(i)
            yield TextDelta(f"t{i}", i, 0.0, final=i == 2)
        yield TextDone(Finish.LENGTH, 1, 3)

    async for delta, done in token_steps(events()):
        sent.append((delta.token, len(pulled)))
        assert (done is not None) == (delta.token == 2)
    # Token i went out when only i + 1 events had been pulled from the engine.
    assert sent == [(0, 1), (1, 2), (2, 3)]


async def test_text_after_an_unmarked_end_is_an_item_of_its_own() -> None:
    async def events() -> AsyncGenerator[TextDelta | TextDone, None]:
        yield TextDelta("a", 1, 0.0)
        yield TextDelta("b", 2, 0.0)
        yield TextDelta("\ufffd", -1, 0.0)
        yield TextDone(Finish.LENGTH, 1, 2)

    assert await _steps(events()) == [("a", False), ("b", False), ("\ufffd", True)]


async def test_the_marked_token_carries_the_end() -> None:
    async def events() -> AsyncGenerator[TextDelta | TextDone, None]:
        yield TextDelta("a", 1, 0.0)
        yield TextDelta("b.", 2, 0.0, final=True)
        yield TextDone(Finish.STOP_SEQUENCE, 1, 2, ".")

    assert await _steps(events()) == [("a", False), ("b.", True)]
