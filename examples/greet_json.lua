--* subject: funcs.greet
--* name: greet_json
-- JSON in, JSON out: {"name": "Ada"} → {"greeting": "Hello, Ada!", "length": 3}
local json = require("json")

function OnMessage(subject, payload)
    local request, err = json.decode(payload)
    if request == nil then
        return json.encode({ error = "payload is not JSON: " .. tostring(err) })
    end
    local name = request.name or "stranger"
    return json.encode({ greeting = "Hello, " .. name .. "!", length = #name })
end
