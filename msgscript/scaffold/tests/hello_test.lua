-- Run with: msgscriptcli test tests
local test = require("test")

function test_hello()
    local reply = test.invoke("funcs.hello", "world")
    test.assert_equal(reply.payload, "Hello, world!")
    test.assert_nil(reply.error)
end

function test_hello_without_a_name()
    local reply = test.invoke("funcs.hello", "")
    test.assert_equal(reply.payload, "Hello, world!")
end
