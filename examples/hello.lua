--* subject: funcs.hello
--* name: hello
-- The classic: answer with the subject and the payload it was called with.
function OnMessage(subject, payload)
    return "Processed subject: " .. subject .. " with payload: " .. payload
end
