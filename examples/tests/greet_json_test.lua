-- examples/greet_json.lua: JSON in, JSON out.
local test = require("test")
local json = require("json")

local function greet(request)
    local reply = test.invoke("funcs.greet", json.encode(request))
    test.assert_nil(reply.error)
    return json.decode(reply.payload)
end

function test_greets_by_name()
    test.assert_equal(greet({ name = "Ada" }), { greeting = "Hello, Ada!", length = 3 })
end

function test_greets_a_stranger_without_a_name()
    test.assert_equal(greet({}).greeting, "Hello, stranger!")
end

function test_a_payload_that_is_not_json_gets_an_error_document()
    local reply = test.invoke("funcs.greet", "not json")
    test.assert_match(json.decode(reply.payload).error, "^payload is not JSON: ")
end
