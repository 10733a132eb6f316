-- Scripts that use modules and plugins: examples/hello_plugin.lua (the hello plugin, -p plugins),
-- examples/io.lua (files in a scratch directory), examples/http_get.lua (the http module) and
-- examples/nats_publish.lua (the nats module).
local test = require("test")

function test_a_plugin_module()
    test.assert_equal(test.invoke("funcs.hello_plugin", "").payload, "Hello from a Go plugin!")
end

function test_files_land_in_a_scratch_directory()
    local reply = test.invoke("funcs.localio", "some text")
    test.assert_nil(reply.error)
    test.assert_equal(reply.payload, "written to file lua_test.out")
end

-- test.url is the test run's own HTTP gateway: here http_get.lua calls hello.lua through it.
function test_the_http_module_reaches_the_gateway()
    local reply = test.invoke("funcs.http_get", '{"url": "' .. test.url .. '/funcs.hello"}')
    test.assert_match(reply.payload, "^HTTP 200: %[")
    test.assert_match(test.invoke("funcs.http_get", "no json").payload, "^error: expected a JSON payload")
end

-- Without --nats the nats module's calls fail ("no NATS in tests (use --nats)"); nats_publish.lua does not
-- look at what nats.publish returns, so it answers without an error either way.
function test_publishing_does_not_fail_the_script()
    local reply = test.invoke("funcs.nats_publish", "")
    test.assert_nil(reply.error)
    test.assert_equal(reply.payload, "")
end
