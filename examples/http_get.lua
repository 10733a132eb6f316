--* subject: funcs.http_get
--* name: http_get
-- Calls a URL with the http module. Send {"url": "http://example.com/"} to funcs.http_get; the answer
-- is "HTTP <status>: <body>", or "error: <message>" when the payload is not such JSON or the request
-- fails.
local http = require("http")
local json = require("json")

function OnMessage(subject, payload)
    local request, err = json.decode(payload)
    if type(request) ~= "table" or type(request.url) ~= "string" then
        return "error: expected a JSON payload like {\"url\": \"http://example.com/\"}"
    end
    local response
    response, err = http.get(request.url, { timeout = 5 })
    if response == nil then
        return "error: " .. tostring(err)
    end
    return "HTTP " .. response.status_code .. ": " .. response.body
end
