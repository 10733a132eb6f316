--* subject: funcs.hello_plugin
--* name: hello
-- Uses a module from a plugin: start the daemon with -plugin plugins, then send anything to
-- funcs.hello_plugin; the answer is "Hello from a Go plugin!" (the text scripts written for the Go
-- msgscript expect).
local hello = require("hello")

function OnMessage(subject, payload)
    return hello.print()
end
