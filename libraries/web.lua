--* name: web
-- web: a small router for HTML-mode scripts (`--* html: true` and `--* require: web`).
--
--   local app = Router.new()            -- or Router.new(layout): a mustache page with {{& header }},
--                                       -- {{& body }} and {{& footer }}
--   app:get("/", function(req) return "<p>Hello {{ who }}</p>", { who = req:query("who") } end)
--   app:get("/users/<id>", function(req) return "", { id = req:path("id") } end)   -- JSON
--   app:post("/login", function(req) return nil, nil, nil, { redirect = "/" } end)
--
-- Router.new defines the globals GET, POST, PUT, PATCH, HEAD, OPTIONS and DELETE that the daemon
-- calls for HTML-mode scripts, each handing the request to the router.
--
-- A handler gets a Request (fields queries, paths and form; req:query([name]), req:path([name]))
-- and returns template, data, code, opts:
--   opts.redirect        answer 302 with that Location;
--   template nil or ""   answer data as JSON (an empty table is []);
--   otherwise            render template with data (mustache), inside the layout with opts.header and
--                        opts.footer unless opts.no_template; send opts.headers.
-- code defaults to 200. Query strings (GET only) and form bodies are split on & and =, without
-- URL-decoding. Exact paths win; then the first registered pattern with <name> segments that
-- matches the start of the path. Anything else is "URL <url> doesn't exist", 404.
--
-- Uses the built-in json module and, to render templates, the template module of the
-- gopher-lua-libs plugin.
do
  local json = require("json")
  local find, sub = string.find, string.sub
  local setmetatable, type, ipairs, error, tostring = setmetatable, type, ipairs, error, tostring

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

  function Request.new(queries, paths, form)
    return setmetatable({ queries = queries or {}, paths = paths or {}, form = form or {} }, Request)
  end

  function Request:query(name)
    if name == nil then return self.queries end
    return self.queries[name]
  end

  function Request:path(name)
    if name == nil then return self.paths end
    return self.paths[name]
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
    local body = render(template, data)
    if not opts.no_template then
      body = render(self.layout, { header = opts.header, body = body, footer = opts.footer })
    end
    return body, code, opts.headers
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
      return self:respond(handler(Request.new(queries, nil, form)))
    end
    for _, route in ipairs(self.patterns[verb] or {}) do
      local params = match(route.path, path)
      if params ~= nil then
        return self:respond(route.handler(Request.new(queries, params, form)))
      end
    end
    return "URL " .. url .. " doesn't exist", 404, {}
  end
end
