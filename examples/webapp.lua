--* subject: http.webapp
--* name: webapp
--* html: true
--* require: web
-- A small web application on the web.lua router (start the daemon with -plugin plugins
-- -library libraries), at http://localhost:7643/http.webapp/:
--   GET  /                  a page with a form
--   POST /greet             the form (name=...): redirects to /hello/<name>
--   GET  /hello/<name>      a page greeting <name>
--   GET  /api/hello/<name>  the same greeting as JSON
--   GET  /old               redirects to the home page
-- Over NATS, send http.webapp a Message such as
--   {"subject": "http.webapp", "method": "GET", "url": "/hello/Ada", "payload": ""}
-- (payload: the request body, base64).

-- Where the gateway serves this script: redirects must point back under it.
local BASE = "/http.webapp"

-- web.lua hands over query strings, paths and forms as sent; decode what the pages show.
local function unescape(text)
    text = string.gsub(text, "%+", " ")
    return (string.gsub(text, "%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

local function escape(text)
    return (string.gsub(text, "[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local app = Router.new()
-- Options for the HTML pages: what the layout shows above and below each page.
local page = {
    header = '<nav><a href="' .. BASE .. '/">Home</a> | <a href="' .. BASE .. '/api/hello/world">JSON</a></nav>',
    footer = "<footer>msgscript webapp example</footer>",
}

app:get("/", function(req)
    return [[<h1>Greeter</h1>
<form method="post" action="{{ base }}/greet">
<input name="name" placeholder="Your name"> <button>Greet me</button>
</form>
<p>Or ask the API: <a href="{{ base }}/api/hello/world">{{ base }}/api/hello/world</a></p>]], { base = BASE }, 200, page
end)

app:post("/greet", function(req)
    local name = unescape(req.form.name or "")
    if name == "" then
        return nil, nil, nil, { redirect = BASE .. "/" }
    end
    return nil, nil, nil, { redirect = BASE .. "/hello/" .. escape(name) }
end)

app:get("/hello/<name>", function(req)
    -- {{ name }} is HTML-escaped by the template engine.
    return "<h1>Hello, {{ name }}!</h1><p><a href=\"{{ base }}/\">Back</a></p>",
        { name = unescape(req:path("name")), base = BASE }, 200, page
end)

app:get("/api/hello/<name>", function(req)
    local name = unescape(req:path("name"))
    return "", { greeting = "Hello, " .. name .. "!", name = name }
end)

app:get("/old", function(req)
    return nil, nil, nil, { redirect = BASE .. "/" }
end)
