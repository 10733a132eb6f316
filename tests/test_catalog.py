"""The internal subjects' answers: over NATS a Reply whose error is Go's text, for HTTP the same failure typed."""

from __future__ import annotations

import pytest

from msgscript.catalog import INFO_NAMED_SCRIPT, LIST_NAMES, Catalog, CatalogError, CatalogMiss, InvalidCatalogRequest
from msgscript.script import parse_script
from msgscript.store.memory_store import MemoryStore

HELLO = "--* subject: funcs.hello\n--* name: hello\nfunction OnMessage(s, p) return p end\n"


@pytest.fixture
def catalog() -> Catalog:
    store = MemoryStore()
    store.add(parse_script(HELLO))
    return Catalog(store)


FAILURES = [
    (
        INFO_NAMED_SCRIPT,
        b"nocomma",
        InvalidCatalogRequest,
        '{"script_result":null,"is_html":false,"error":"invalid request"}',
    ),
    (
        INFO_NAMED_SCRIPT,
        b"a,b,c",
        InvalidCatalogRequest,
        '{"script_result":null,"is_html":false,"error":"invalid request"}',
    ),
    (
        INFO_NAMED_SCRIPT,
        b"funcs.hello,nope",
        CatalogMiss,
        '{"script_result":null,"is_html":false,"error":"no script found for subject funcs.hello with name nope"}',
    ),
    (
        LIST_NAMES,
        b"nothing.here",
        CatalogMiss,
        '{"script_result":null,"is_html":false,"error":"script not found for subject: nothing.here"}',
    ),
]


@pytest.mark.parametrize(("subject", "data", "kind", "reply_json"), FAILURES)
async def test_a_failure_is_typed_for_http_and_the_go_reply_over_nats(
    catalog: Catalog, subject: str, data: bytes, kind: type[CatalogError], reply_json: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        await catalog.lookup(subject, data)
    assert type(caught.value) is kind
    reply = await catalog.answer(subject, data)
    assert reply.to_json() == reply_json.encode()
    assert reply.error == str(caught.value)


async def test_an_answer_is_the_same_both_ways(catalog: Catalog) -> None:
    for subject, data in ((LIST_NAMES, b"funcs.hello"), (INFO_NAMED_SCRIPT, b"funcs.hello,hello")):
        assert await catalog.answer(subject, data) == await catalog.lookup(subject, data)
    (result,) = (await catalog.lookup(LIST_NAMES, b"funcs.hello")).results or ()
    assert result.payload == b'["hello"]'
