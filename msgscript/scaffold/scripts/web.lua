--* subject: web
--* name: web
--* html: true
--* require: web
-- A web application on the router of libraries/web.lua, at http://localhost:7643/web/
--   GET  /web/                      a page
--   GET  /web/api/hello?name=Ada    {"greeting":"Hello, Ada!"} (JSON)
--   POST /web/api/hello             the same, the name in a JSON body {"name":"Ada"} or a form name=Ada
-- Without a name the JSON route answers 400 {"error":"name is required"}: a handler returns
-- nil, "message" for a caller's mistake. A handler that raises an error answers 500.

local app = Router.new()

app:get("/", function(req)
    -- A template with {{ mustache }} tags needs the template module: start msgscript with
    -- -plugin <msgscript's plugins directory> to use them.
    return [[<h1>It works</h1>
<p>This page is <code>scripts/web.lua</code>. Its JSON route:
<a href="/web/api/hello?name=world">/web/api/hello?name=world</a></p>]]
end)

local function hello(req)
    -- Route parameters, the query and the body in one table.
    local name = req:args("name")
    if type(name) ~= "string" or name == "" then
        return nil, "name is required"
    end
    return "", { greeting = "Hello, " .. name .. "!" }
end

app:get("/api/hello", hello)
app:post("/api/hello", hello)
