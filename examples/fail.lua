-- A script that always fails, to show what an error result looks like.
--* subject: funcs.fail
--* name: fail
function OnMessage(subject, payload)
    return this_function_does_not_exist(payload)
end
