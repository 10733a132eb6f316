--* subject: funcs.nats_publish
--* name: nats_publish
-- Fire-and-forget a JSON notification on another subject; the script itself returns nothing.
local json = require("json")
local nats = require("nats")

function OnMessage(subject, payload)
    nats.publish("funcs.pushover", json.encode({ title = "booyah", message = "boo-YAH" }))
end
