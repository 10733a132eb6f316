--* name: web
-- web: a small router for HTML-mode scripts (`--* html: true` and `--* require: web`).
--
--   local app = Router.new()            -- or Router.new(layout): a mustache page with {{& header }},
--                                       -- {{& body }} and {{& footer }}
--   app:get("/", function(req) return "<p>Hello {{ who }}</p>", { who = req:query("who") } end)
--   app:get("/users/<id>", function(req) return "", { id = req:path("id") } end)   -- JSON
--   app:post("/login", function(req) return nil, nil, nil, { redirect = "/" } end)
--   app:post("/greet", function(req)
--     local name = req:args("name")                     -- route, query, JSON body or form
--     if name == nil then return nil, "name is required" end   -- 400 {"error":"name is required"}
--     return "", { greeting = "Hello, " .. name }
--   end)
--
-- Router.new defines the globals GET, POST, PUT, PATCH, HEAD, OPTIONS and DELETE that the daemon
-- calls for HTML-mode scripts, each handing the request to the router.
--
-- A handler gets a Request (fields queries, paths, form and body; req:query([name]), req:path([name]),
-- req:args([name])) and returns template, data, code, opts:
--   opts.redirect        answer 302 with that Location;
--   nil, "message"       a caller's mistake: answer code (default 400) {"error":"message"} as JSON;
--   template nil or ""   answer data as JSON (an empty table is []);
--   otherwise            render template with data (mustache), inside the layout with opts.header and
--                        opts.footer unless opts.no_template; send opts.headers.
-- code defaults to 200. A handler that raises an error answers 500 {"error":"<the error text>"}; when
-- MSGSCRIPT_PRODUCTION is 1 (the daemon's -production) the answer says "internal server error" and the
-- text is printed to the daemon's standard output instead. A request no route matches answers 404
-- {"error":"not found"}. JSON answers carry Content-Type: application/json.
--
-- Query strings (GET only) and form bodies are split on & and =, without URL-decoding. req:args()
-- merges the route's <name> segments, the query and the body into one table (route > query > body);
-- the body counts as JSON when it starts with "{" (an object that does not decode answers 400) and
-- as a form otherwise. Exact paths win; then the first registered pattern with <name> segments that
-- matches the start of the path.
--
-- Uses the built-in json module and, to render templates with mustache tags and custom layouts, the
-- template module of the gopher-lua-libs plugin (a template without "{{" inside the default layout
-- needs no plugin).
do
  local json = require("json")
  local find, sub = string.find, string.sub
  local setmetatable, getmetatable, type, ipairs, pairs = setmetatable, getmetatable, type, ipairs, pairs
  local error, pcall, tostring, print, getenv = error, pcall, tostring, print, os.getenv

  local VERBS = { "GET", "POST", "PUT", "PATCH", "HEAD", "OPTIONS", "DELETE" }

  local DEFAULT_LAYOUT = [[<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
</head>
<body>
<header>{{& header }}</header>
{{& body }}
{{& footer }}
</body>
</html>
]]
  -- DEFAULT_LAYOUT around its three values, without the template module.
  local LAYOUT_HEAD = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n</head>\n<body>\n<header>"
  local LAYOUT_TAIL = "\n</body>\n</html>\n"

  local JSON_HEADERS = { ["Content-Type"] = "application/json" }
  local PRODUCTION_VARIABLE = "MSGSCRIPT_PRODUCTION"
  local HIDDEN_ERROR = "internal server error"

  -- Raised (as an error value) by Request methods when the request itself is at fault: a 400.
  local BadRequest = {}

  -- Split on a plain-text delimiter. A delimiter at the very start yields no leading empty piece and
  -- an empty remainder at the end is dropped; empty pieces in between are kept.
  function string:split(delim)
    local pieces = {}
    if delim == nil or delim == "" then
      if self ~= "" then pieces[1] = self end
      return pieces
    end
    local from = 1
    while true do
      local first, last = find(self, delim, from, true)
      if first == nil then break end
      if first > 1 then pieces[#pieces + 1] = sub(self, from, first - 1) end
      from = last + 1
    end
    if from <= #self then pieces[#pieces + 1] = sub(self, from) end
    return pieces
  end

  -- "a=1&b=2" → {a = "1", b = "2"}; pieces without exactly one "=" are skipped.
  local function parse_pairs(text)
    local values = {}
    if text == nil then return values end
    for _, piece in ipairs(text:split("&")) do
      local eq = find(piece, "=", 1, true)
      if eq ~= nil and find(piece, "=", eq + 1, true) == nil then
        values[sub(piece, 1, eq - 1)] = sub(piece, eq + 1)
      end
    end
    return values
  end

  Request = {}
  Request.__index = Request

  function Request.new(queries, paths, form, body)
    local req = { queries = queries or {}, paths = paths or {}, form = form or {}, body = body or "" }
    return setmetatable(req, Request)
  end

  function Request:query(name)
    if name == nil then return self.queries end
    return self.queries[name]
  end

  function Request:path(name)
    if name == nil then return self.paths end
    return self.paths[name]
  end

  -- What the body holds for args(): a JSON object when it starts with "{", the form otherwise.
  local function body_values(req)
    if find(req.body, "^%s*{") == nil then return req.form end
    local value, err = json.decode(req.body)
    if type(value) ~= "table" then
      error(setmetatable({ message = "invalid JSON body: " .. tostring(err) }, BadRequest), 0)
    end
    return value
  end

  -- Route params, query and body in one table, the first of them winning; computed on first use.
  function Request:args(name)
    local args = self.merged
    if args == nil then
      args = {}
      for _, source in ipairs({ body_values(self), self.queries, self.paths }) do
        for key, value in pairs(source) do args[key] = value end
      end
      self.merged = args
    end
    if name == nil then return args end
    return args[name]
  end

  -- The params of `path` under `pattern`, or nil. The pattern may match the start of the path only,
  -- and must capture at least one <name> segment.
  local function match(pattern, path)
    local want, have = pattern:split("/"), path:split("/")
    if #want > #have then return nil end
    local params, captured = {}, false
    for i, segment in ipairs(want) do
      if #segment > 2 and sub(segment, 1, 1) == "<" and sub(segment, -1) == ">" then
        params[sub(segment, 2, -2)] = have[i]
        captured = true
      elseif segment ~= have[i] then
        return nil
      end
    end
    if not captured then return nil end
    return params
  end

  local engine
  local function render(text, data)
    if engine == nil then engine = require("template").choose("mustache") end
    local out, err = engine:render(text, data)
    if out == nil then error("failed to render template: " .. tostring(err), 0) end
    return out
  end

  -- A page's text: a template without mustache tags is the page itself (no template module needed).
  local function render_page(template, data)
    if find(template, "{{", 1, true) == nil then return template end
    return render(template, data)
  end

  local function text_or_empty(value)
    if value == nil then return "" end
    if type(value) == "string" then return value end
    return nil
  end

  -- `body` inside `layout` with the header and footer. The default layout is filled in here when its
  -- values are text, as mustache would fill it.
  local function wrap(layout, header, body, footer)
    if layout == DEFAULT_LAYOUT then
      local h, f = text_or_empty(header), text_or_empty(footer)
      if h ~= nil and f ~= nil then return LAYOUT_HEAD .. h .. "</header>\n" .. body .. "\n" .. f .. LAYOUT_TAIL end
    end
    return render(layout, { header = header, body = body, footer = footer })
  end

  -- The JSON answer {"error": message}.
  local function json_error(code, message)
    local body = json.encode({ error = message })
    if body == nil then body = '{"error":"unprintable error"}' end
    return body, code, JSON_HEADERS
  end

  local function production()
    return getenv(PRODUCTION_VARIABLE) == "1"
  end

  Router = {}
  Router.__index = Router

  function Router.new(layout)
    if layout == Router then layout = nil end -- called as Router:new()
    local router = setmetatable({ layout = layout or DEFAULT_LAYOUT, exact = {}, patterns = {} }, Router)
    for _, verb in ipairs(VERBS) do
      router.exact[verb] = {}
      router.patterns[verb] = {}
      _G[verb] = function(url, body) return router:handle(verb, url, body) end
    end
    return router
  end

  function Router:add(verb, path, handler)
    if self.exact[verb] == nil then
      self.exact[verb] = {}
      self.patterns[verb] = {}
    end
    self.exact[verb][path] = handler
    local patterns = self.patterns[verb]
    patterns[#patterns + 1] = { path = path, handler = handler }
  end

  for _, verb in ipairs(VERBS) do
    Router[verb:lower()] = function(self, path, handler) self:add(verb, path, handler) end
  end

  -- Turn a handler's (template, data, code, opts) into the (body, code, headers) the daemon sends.
  function Router:respond(template, data, code, opts)
    if template == nil and type(data) == "string" then
      return json_error(code or 400, data)
    end
    data = data or {}
    code = code or 200
    opts = opts or { headers = {}, no_template = false }
    if opts.redirect ~= nil then
      return "", 302, { Location = opts.redirect }
    end
    if template == nil or template == "" then
      local body, err = json.encode(data)
      if body == nil then error("failed to encode JSON: " .. tostring(err), 0) end
      return body, code, { ["Content-Type"] = "application/json" }
    end
    local body = render_page(template, data)
    if not opts.no_template then
      body = wrap(self.layout, opts.header, body, opts.footer)
    end
    return body, code, opts.headers
  end

  -- A handler's failure: 400 when the request was at fault, else 500 with the error's text (hidden, and
  -- printed, in production).
  function Router:failed(verb, path, err)
    if getmetatable(err) == BadRequest then return json_error(400, err.message) end
    local text = type(err) == "string" and err or tostring(err)
    if production() then
      print("web: " .. verb .. " " .. path .. ": " .. text)
      text = HIDDEN_ERROR
    end
    return json_error(500, text)
  end

  local function run(router, handler, req)
    return router:respond(handler(req))
  end

  function Router:call(verb, path, handler, req)
    local ok, body, code, headers = pcall(run, self, handler, req)
    if ok then return body, code, headers end
    return self:failed(verb, path, body)
  end

  function Router:handle(verb, url, body)
    url = url or ""
    local path, queries = url, {}
    if verb == "GET" then
      local mark = find(url, "?", 1, true)
      if mark ~= nil then
        path, queries = sub(url, 1, mark - 1), parse_pairs(sub(url, mark + 1))
      end
    end
    if path == "" then path = "/" end
    local form = parse_pairs(body)

    local handler = self.exact[verb] and self.exact[verb][path]
    if handler ~= nil then
      return self:call(verb, path, handler, Request.new(queries, nil, form, body))
    end
    for _, route in ipairs(self.patterns[verb] or {}) do
      local params = match(route.path, path)
      if params ~= nil then
        return self:call(verb, path, route.handler, Request.new(queries, params, form, body))
      end
    end
    return json_error(404, "not found")
  end
end
