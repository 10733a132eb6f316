-- examples/with_library.lua uses Greeting() from libraries/greeting.lua (`--* require: greeting`): the
-- libraries/ directory next to the script directory is found by itself (or give --library DIR).
local test = require("test")

function test_the_library_is_prepended()
    local reply = test.invoke("funcs.library", "Ada")
    test.assert_nil(reply.error)
    test.assert_equal(reply.payload, "Hello, Ada!")
end
