--* subject: http.website
--* name: demo
--* html: true
-- A small website without a router: the daemon calls GET(url, body) for GET requests, and the
-- script picks a page from a table of routes and renders it with the template module (start the
-- daemon with -plugin plugins). Open http://localhost:7643/http.website/foobar in a browser.
local template = require("template")
local mustache = template.choose("mustache")

local PAGE = [[<!DOCTYPE html>
<html>
<head><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<p>{{ text }}</p>
</body>
</html>
]]

local routes = {
    ["/foobar"] = function()
        return { title = "foobar yo", text = "Served by a Lua script." }
    end,
}

function GET(url, body)
    local path = url
    local mark = string.find(url, "?", 1, true)
    if mark ~= nil then
        path = string.sub(url, 1, mark - 1)
    end
    local route = routes[path]
    if route == nil then
        return "no page at " .. path, 404, { ["Content-Type"] = "text/plain" }
    end
    local html, err = mustache:render(PAGE, route(body))
    if html == nil then
        return "failed to render the page: " .. tostring(err), 500, { ["Content-Type"] = "text/plain" }
    end
    return html, 200
end
