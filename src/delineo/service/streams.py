"""A request body read chunk by chunk with an idle bound: an upload (multipart) and an edited
mask (a NIfTI body) both refuse a sender that stops sending."""

from __future__ import annotations

from typing import AsyncIterable, AsyncIterator, Callable

import anyio


async def idle_bounded(stream: AsyncIterable[bytes], idle_s: float, refused: Callable[[str, int], Exception]) -> AsyncIterator[bytes]:
    """The chunks of ``stream`` (``request.stream()``); nothing received for ``idle_s`` seconds ->
    ``refused(message, 408)`` is raised."""
    it = stream.__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_s):
                chunk = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise refused(f"the upload stalled (nothing received for {idle_s:.0f} s)", 408) from None
        yield chunk
