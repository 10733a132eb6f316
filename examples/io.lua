--* subject: funcs.localio
--* name: write
-- Relative paths land in a scratch directory of this execution, removed once it ends.
function OnMessage(subject, payload)
    local f = assert(io.open("lua_test.out", "a"))
    f:write("testing 123 from nats\n" .. payload)
    f:close()
    return "written to file lua_test.out"
end
