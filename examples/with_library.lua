--* subject: funcs.library
--* name: with_library
--* require: greeting
-- Uses Greeting() from libraries/greeting.lua (start the daemon with -library libraries).
function OnMessage(subject, payload)
    if Greeting == nil then
        return "the greeting library is not loaded (start with -library libraries)"
    end
    return Greeting(payload)
end
