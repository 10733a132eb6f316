"""Scripts used by the end-to-end tests (the fixtures of the reference checklist, plus our own)."""

from __future__ import annotations

from pathlib import Path

SCRIPTS: dict[str, str] = {
    "hello.lua": (Path(__file__).parent.parent / "examples" / "hello.lua").read_text(),
    "fail.lua": (Path(__file__).parent.parent / "examples" / "fail.lua").read_text(),
    "http_hello.lua": """--* subject: http.hello
--* name: http_get
--* html: true
function GET(url, body)
    return "Hello, " .. body .. "!", 200, {["Content-Type"] = "text/plain"}
end
""",
    "web_page.lua": """--* subject: web.page
--* name: page
--* html: true
function GET(url, body) return "<p>hi</p>" end
function POST(url, body) return "created", "201", {["X-Test"] = 5} end
function PUT(url, body) error("boom") end
""",
    "http_echo.lua": """--* subject: http.echo
--* name: echo
--* html: true
function GET(url, body) return url end
""",
    "number.lua": """--* subject: funcs.number
--* name: number
function OnMessage(subject, payload) return 42 end
""",
    "noop.lua": """--* subject: funcs.noop
--* name: noop
local x = 1
""",
    "multi_a.lua": """--* subject: funcs.multi
--* name: a
function OnMessage() return "A" end
""",
    "multi_b.lua": """--* subject: funcs.multi
--* name: b
function OnMessage() return "B" end
""",
    "mixed_plain.lua": """--* subject: funcs.mixed
--* name: plain
function OnMessage() return "raw" end
""",
    "mixed_page.lua": """--* subject: funcs.mixed
--* name: page
--* html: true
function GET() return "<b>html</b>" end
""",
    "lib.lua": """--* subject: funcs.lib
--* name: lib
--* require: greet
function OnMessage(_, p) return Greet(p) end
""",
    "nolib.lua": """--* subject: funcs.nolib
--* name: nolib
--* require: nosuchlib
function OnMessage() return "ok" end
""",
    "json.lua": """--* subject: funcs.json
--* name: json
local json = require("json")
function OnMessage() return json.encode({}) .. "|" .. json.encode({b=1, a="x"}) end
""",
    "pub.lua": """--* subject: funcs.pub
--* name: pub
local nats = require("nats")
function OnMessage(subject, payload)
    local ok, err = nats.publish("funcs.sink", payload)
    return tostring(ok)
end
""",
    "inbox.lua": """--* subject: _INBOX.taken
--* name: inbox
function OnMessage() return "must never run" end
""",
    "wild.lua": """--* subject: funcs.wild.*
--* name: wild
function OnMessage(subject) return "wild " .. subject end
""",
    "wild_a.lua": """--* subject: funcs.wild.a
--* name: literal
function OnMessage(subject) return "literal " .. subject end
""",
    "syntax.lua": """--* subject: funcs.syntax
--* name: syntax
function OnMessage( return "x" end
""",
    "toplevel.lua": """--* subject: funcs.toplevel
--* name: toplevel
error("boom")
""",
    "loop.lua": """--* subject: funcs.loop
--* name: loop
--* timeout: 1s
function OnMessage() while true do end end
""",
    "bomb.lua": """--* subject: funcs.bomb
--* name: bomb
function OnMessage()
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end
end
""",
    "exit.lua": """--* subject: funcs.exit
--* name: exit
function OnMessage() os.exit(3) end
""",
    "counter.lua": """--* subject: funcs.counter
--* name: counter
function OnMessage()
    Count = (Count or 0) + 1
    return tostring(Count)
end
""",
    "wait.lua": """--* subject: funcs.wait
--* name: wait
local nats = require("nats")
function OnMessage(subject, payload)
    local reply, err = nats.request("test.slow", payload, 10)
    if reply == nil then error(err) end
    return reply
end
""",
    "sink.lua": """--* subject: funcs.count
--* name: count
local nats = require("nats")
function OnMessage(subject, payload) nats.publish("funcs.sink", payload) end
""",
}

LIBRARIES: dict[str, str] = {
    "greet.lua": """--* name: greet
function Greet(n) return "hi " .. n end
""",
}


def write_fixtures(root: Path) -> tuple[Path, Path]:
    """Write the scripts and libraries under root; return (script dir, library dir)."""
    scripts = root / "scripts"
    libs = root / "libs"
    scripts.mkdir()
    libs.mkdir()
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)
    for name, text in LIBRARIES.items():
        (libs / name).write_text(text)
    return scripts, libs
