"""Stored responses over the state store (DESIGN §12 "State", §14 "Stored responses"): the I/O.

A follow-up's conversation is read from the store turn by turn (``dialects/conversations.py`` says
what a turn is and checks each one); a new turn is written before the caller receives the end of
its answer, so an id the caller holds is always one the gateway can continue; ``GET``, ``DELETE``
and ``input_items`` serve a stored response to its owner only. An id that is unknown, expired or
someone else's is the same answer whichever it is, so nobody learns that another caller's id exists.

When the store is down, a request that needs a stored conversation is 503; one that only stores
is served, and the failure is counted (by the store) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import orjson

from .dialects import conversations
from .dialects.conversations import Affinity, Chain, Owner, Turn
from .dialects.responses import ResponsesStream, new_id
from .errors import GatewayError
from .observability import THROTTLE
from .providers import StreamDecoder
from .relay import ChatFlow, Finish, Gateway
from .state import Store, StoreError

log = logging.getLogger(__name__)

# The longest response id looked up: the gateway's are 29 characters, providers' (kept as affinity
# records) a few dozen. Anything longer, or not plain ASCII, is no id the store holds.
_MAX_ID: Final = 128


def unavailable() -> GatewayError:
    """503 when a stored conversation is needed and the store cannot be reached."""
    return GatewayError(503, "Stored responses are unavailable right now (the gateway's state store did not "
                             "answer); retry shortly, or send the whole conversation in 'input'.",
                        type="server_error", code="state_unavailable", retry_after=1)


async def store_of(gateway: Gateway) -> Store:
    """The opened store, for a request that cannot be served without it: 503 when it is down."""
    try:
        return await gateway.store()
    except StoreError:
        raise unavailable() from None


async def store_for_keeping(gateway: Gateway) -> Store | None:
    """The opened store, for a request that only keeps its answer: None when it is down (the
    request is served unstored, and the failure logged)."""
    try:
        return await gateway.store()
    except StoreError as exc:
        THROTTLE.warning(log, "stored-open", "the state store is down (%s); responses are served unstored", exc)
        return None


def checked_id(value: Any, missing: GatewayError) -> str:
    """A response id as the caller sent it, when the store may hold it; ``missing`` otherwise."""
    if not isinstance(value, str) or not value or len(value) > _MAX_ID or not value.isascii() \
            or not value.replace("_", "").replace("-", "").isalnum():
        raise missing
    return value


async def previous(store: Store, response_id: str, owner: Owner, ttl: float) -> Chain | Affinity | None:
    """What the store knows of the response a follow-up continues: the conversation the gateway
    kept (its time to live renewed), the affinity record of one a provider kept, or None. 400 for
    an id that is another caller's or whose conversation is broken, 503 when the store is down."""
    checked_id(response_id, conversations.not_found(response_id))
    try:
        data = await store.get(conversations.key(response_id))
        if data is not None:
            chain = await _follow(store, Chain(response_id, owner), response_id, data)
            await store.touch(chain.keys(), ttl)
            return chain
        data = await store.get(conversations.affinity_key(response_id))
        if data is None:
            return None
        try:
            record = Affinity.unpack(data)
        except ValueError:
            return None
        if record.owner != owner:
            raise conversations.not_found(response_id)
        await store.touch([conversations.affinity_key(response_id)], max(ttl, conversations.AFFINITY_MIN_TTL))
        return record
    except StoreError:
        raise unavailable() from None


async def _follow(store: Store, chain: Chain, response_id: str, data: bytes | None) -> Chain:
    """``chain`` read on from ``response_id``'s value back to its first turn (at most MAX_TURNS
    reads; ``Chain.add`` checks each); StoreError as the store raises it."""
    current = chain.add(response_id, data)
    while current is not None:
        current = chain.add(current, await store.get(conversations.key(current)))
    return chain


async def _read(store: Store, previous: str, owner: Owner) -> Chain:
    """The chain ``previous`` ends, without renewing it (a read by ``input_items``)."""
    try:
        return await _follow(store, Chain(previous, owner), previous,
                             await store.get(conversations.key(previous)))
    except StoreError:
        raise unavailable() from None


def keeper(store: Store, owner: Owner, parent: str | None, items: list[dict[str, Any]], ttl: float) -> Finish:
    """The relay's ``Finish`` for a response to be stored: given the caller's whole body or the
    done stream, it writes the turn — or, when a provider answered natively (and stored it
    itself), the affinity record that sends a follow-up to that provider. A failure is logged and
    counted, never the caller's."""

    async def keep(flow: ChatFlow, answer: bytes | StreamDecoder) -> None:
        if flow.native:
            if flow.upstream_id is not None:
                record = Affinity(flow.attempt.provider.name, flow.attempt.model, owner)
                await _put(store, conversations.affinity_key(flow.upstream_id), record.pack(),
                           max(ttl, conversations.AFFINITY_MIN_TTL))
            return
        if isinstance(answer, ResponsesStream):
            response = answer.final
        elif isinstance(answer, bytes):
            response = orjson.loads(answer)
        else:
            response = None
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        turn = Turn(response["id"], parent, owner, items, response)
        await _put(store, conversations.key(turn.id), conversations.pack(turn), ttl)

    return keep


async def _put(store: Store, key: str, value: bytes, ttl: float) -> None:
    try:
        await store.put(key, value, ttl)
    except StoreError as exc:
        THROTTLE.warning(log, "stored-put", "a response could not be stored (%s); it was served unstored", exc)


def new_items(value: Any) -> list[dict[str, Any]]:
    """A request's ``input`` as the items its turn stores, each with an id."""
    return conversations.input_items(value, new_id)


async def locate(store: Store, response_id: str, owner: Owner) -> Turn | Affinity:
    """Where ``owner``'s response ``response_id`` is: the turn the gateway kept, or the affinity
    record of one a provider kept; 404 for any other id, 503 when the store cannot be read."""
    missing = conversations.stored_missing(response_id)
    checked_id(response_id, missing)
    try:
        data = await store.get(conversations.key(response_id))
        found: Turn | Affinity
        if data is not None:
            found, _ = conversations.unpack(data)
        else:
            data = await store.get(conversations.affinity_key(response_id))
            if data is None:
                raise missing
            found = Affinity.unpack(data)
    except StoreError:
        raise unavailable() from None
    except ValueError:
        raise missing from None
    if found.owner != owner:
        raise missing
    return found


async def forget(store: Store, key: str) -> None:
    """``key`` removed from the store; 503 when it cannot be."""
    try:
        await store.delete(key)
    except StoreError:
        raise unavailable() from None


async def input_page(store: Store, turn: Turn, query: Mapping[str, str]) -> bytes:
    """``GET …/input_items``: the input the model saw for a kept response (its conversation before
    it, then its own input), one page."""
    items: list[dict[str, Any]] = []
    if turn.parent is not None:
        try:
            items = (await _read(store, turn.parent, turn.owner)).items()  # a read: no renewal
        except GatewayError as exc:
            if exc.status == 503:
                raise
            # The turns before it expired or were deleted: what is left is its own input.
    items.extend(turn.items)
    return conversations.page(items, query)
