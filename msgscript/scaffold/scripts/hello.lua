--* subject: funcs.hello
--* name: hello
-- Answers "Hello, <payload>!" on the NATS subject funcs.hello, and over HTTP at /funcs.hello:
--   nats request funcs.hello world
--   curl -d world localhost:7643/funcs.hello
function OnMessage(subject, payload)
    if payload == "" then
        payload = "world"
    end
    return "Hello, " .. payload .. "!"
end
