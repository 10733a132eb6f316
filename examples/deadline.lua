--* subject: funcs.deadline
--* name: deadline
--* timeout: 1s
-- A runaway loop is stopped at its deadline (here one second, instead of the daemon's default):
-- the caller gets "script timed out after 1s" and the daemon keeps serving.
function OnMessage(subject, payload)
    if payload == "loop" then
        while true do end
    end
    return "finished in time"
end
