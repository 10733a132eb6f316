"""The `scrape` module of the httpscrape plugin, run through the daemon's Lua executor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from msgscript.executors.base import Executor
from msgscript.lua.modules import builtin_modules
from msgscript.lua.plugin_loader import load_plugins
from msgscript.message import Reply
from tests.conftest import DaemonFactory
from tests.lua_harness import PLUGIN_DIR, lua_executor, on_message

PAGE = """<!DOCTYPE html>
<html>
<head><title>Shop &amp; more</title><link rel="stylesheet" href="/s.css"></head>
<body>
<div id="main" class="content  wide">
  <h1 class="title">Products</h1>
  <ul class="items">
    <li class="item" data-id="1"><a href="/p/1" title="First">Apple</a>
    <li class="item special" data-id="2"><a href="/p/2">Pear <b>green</b></a>
    <li class="items-not" data-id="3">Plum
  </ul>
  <p class="note">Prices <em>include</em>
     tax.
  <p class="note">Second note
  <hr><img src="/logo.png" alt="logo"><span class="solo">after the void</span>
</div>
<div class="CONTENT">upper case class</div>
</body>
</html>
"""

# Returns the results as JSON, so a test sees the table exactly ([] for an empty one), and the error.
RUN = """local scrape = require("scrape")
local json = require("json")
local results, err = scrape.{call}
return json.encode({{ results = results, err = err == nil and "nil" or err }})"""


@pytest.fixture
async def executor() -> AsyncIterator[Executor]:
    async with lua_executor() as ex:
        yield ex


async def scrape(executor: Executor, call: str, page: str = PAGE) -> list[object]:
    """Run `scrape.<call>` with the global `page` holding `page`; returns the results, checking err is nil."""
    body = RUN.format(call=call)
    payload = await on_message(executor, "page = payload\n" + body, page)
    doc = json.loads(payload or b"")
    assert doc["err"] == "nil"
    results = doc["results"]
    assert isinstance(results, list)
    return results


async def test_find_attr_by_class_matches_a_word_of_the_class_list(executor: Executor) -> None:
    assert await scrape(executor, 'find_attr_by_class(page, "data-id", "item")') == ["1", "2"]
    assert await scrape(executor, 'find_attr_by_class(page, "id", "wide")') == ["main"]
    # A class is matched as a whole word, case-sensitively.
    assert await scrape(executor, 'find_attr_by_class(page, "data-id", "items-not")') == ["3"]
    assert await scrape(executor, 'find_attr_by_class(page, "class", "CONTENT")') == ["CONTENT"]


async def test_a_missing_attribute_reads_as_empty(executor: Executor) -> None:
    assert await scrape(executor, 'find_attr_by_tag(page, "title", "a")') == ["First", ""]


async def test_find_attr_by_id(executor: Executor) -> None:
    assert await scrape(executor, 'find_attr_by_id(page, "class", "main")') == ["content  wide"]
    assert await scrape(executor, 'find_attr_by_id(page, "class", "nope")') == []


async def test_find_attr_by_tag_in_document_order(executor: Executor) -> None:
    assert await scrape(executor, 'find_attr_by_tag(page, "href", "a")') == ["/p/1", "/p/2"]
    assert await scrape(executor, 'find_attr_by_tag(page, "src", "img")') == ["/logo.png"]
    assert await scrape(executor, 'find_attr_by_tag(page, "href", "LINK")') == ["/s.css"]


async def test_find_attrs_returns_a_table_per_element(executor: Executor) -> None:
    found = await scrape(executor, 'find_attrs_by_tag(page, 2, "href", "title", "a")')
    assert found == [{"href": "/p/1", "title": "First"}, {"href": "/p/2", "title": ""}]
    found = await scrape(executor, 'find_attrs_by_class(page, 2, "data-id", "class", "item")')
    assert found == [{"data-id": "1", "class": "item"}, {"data-id": "2", "class": "item special"}]
    found = await scrape(executor, 'find_attrs_by_id(page, 1, "class", "main")')
    assert found == [{"class": "content  wide"}]


async def test_find_attrs_takes_the_count_as_gopher_lua_converts_it(executor: Executor) -> None:
    # A numeric string counts; anything else is 0 attributes, and the selector is then the third argument.
    assert await scrape(executor, 'find_attrs_by_tag(page, "1", "src", "img")') == [{"src": "/logo.png"}]
    assert await scrape(executor, 'find_attrs_by_tag(page, nil, "img")') == [[]]


async def test_find_text_joins_the_stripped_descendant_text(executor: Executor) -> None:
    assert await scrape(executor, 'find_text_by_class(page, "note")') == ["Prices include tax.", "Second note"]
    assert await scrape(executor, 'find_text_by_tag(page, "title")') == ["Shop & more"]
    assert await scrape(executor, 'find_text_by_tag(page, "li")') == ["Apple", "Pear green", "Plum"]


async def test_void_elements_have_no_content(executor: Executor) -> None:
    assert await scrape(executor, 'find_text_by_tag(page, "img")') == [""]
    assert await scrape(executor, 'find_text_by_class(page, "solo")') == ["after the void"]


async def test_find_text_by_id(executor: Executor) -> None:
    (text,) = await scrape(executor, 'find_text_by_id(page, "main")')
    assert isinstance(text, str)
    assert text.startswith("Products Apple Pear green Plum Prices include tax.")
    assert text.endswith("after the void")


async def test_deeply_nested_markup(executor: Executor) -> None:
    page = "<b>" * 20000 + "deep" + "</b>" * 20000
    assert await scrape(executor, 'find_text_by_tag(page, "b")', page) == ["deep"]


async def test_a_count_past_the_arguments_reads_empty_names(executor: Executor) -> None:
    assert await scrape(executor, "find_attrs_by_tag(page, 1e9)", "<a>x</a>") == []


async def test_elements_inside_a_match_are_not_searched(executor: Executor) -> None:
    page = '<div class="x">outer <div class="x">inner</div></div><div class="x">next</div>'
    assert await scrape(executor, 'find_text_by_class(page, "x")', page) == ["outer inner", "next"]


async def test_nothing_found_is_an_empty_list(executor: Executor) -> None:
    assert await scrape(executor, 'find_text_by_tag(page, "table")') == []
    assert await scrape(executor, 'find_text_by_tag(page, "p")', "") == []


async def test_broken_markup_still_parses(executor: Executor) -> None:
    page = '<p class="a">one <![a > two</b></i><p class="a">three <!-- <p class="a">hidden --> four'
    assert await scrape(executor, 'find_text_by_class(page, "a")', page) == ["one two", "three four"]


async def test_numbers_are_accepted_as_text(executor: Executor) -> None:
    page = '<td id="42" class="7">n</td>'
    assert await scrape(executor, "find_text_by_id(page, 42)", page) == ["n"]
    assert await scrape(executor, 'find_attr_by_class(page, "id", 7)', page) == ["42"]


async def test_results_are_one_based_lists(executor: Executor) -> None:
    body = """local scrape = require("scrape")
local r, err = scrape.find_attr_by_tag(payload, "href", "a")
return #r .. "|" .. r[1] .. "|" .. r[2] .. "|" .. tostring(r[3]) .. "|" .. tostring(err)"""
    assert await on_message(executor, body, PAGE) == b"2|/p/1|/p/2|nil|nil"


async def test_bytes_that_are_not_utf8_come_back_unchanged(executor: Executor) -> None:
    body = 'return require("scrape").find_text_by_tag(payload, "b")[1]'
    assert await on_message(executor, body, b"<b>caf\xe9 \xff</b>") == b"caf\xe9 \xff"


async def test_scrape_through_a_daemon(
    make_daemon: DaemonFactory, fixture_dirs: tuple[Path, Path], nc: nats.NATS
) -> None:
    scripts, _ = fixture_dirs
    (scripts / "links.lua").write_text(
        """--* subject: funcs.links
--* name: links
local scrape = require("scrape")
function OnMessage(subject, payload)
    local links, err = scrape.find_attr_by_tag(payload, "href", "a")
    if links == nil then return "error: " .. err end
    return table.concat(links, ",")
end
"""
    )
    async with make_daemon(plugin_dir=PLUGIN_DIR):
        msg = await nc.request("funcs.links", PAGE.encode(), timeout=10)
    (result,) = Reply.from_json(msg.data).results or ()
    assert (result.payload, result.error) == (b"/p/1,/p/2", "")


def test_scrape_runs_on_worker_threads() -> None:
    # html.parser takes quadratic time on some malformed markup: never on the event loop.
    modules = load_plugins(PLUGIN_DIR, {}, builtin_modules())
    assert getattr(modules["scrape"], "inline_safe", False) is False
