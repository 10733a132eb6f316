-- examples/fail.lua always fails: a failing script is an error in its result, not a failing test.
local test = require("test")

function test_the_error_names_the_missing_function()
    local reply = test.invoke("funcs.fail", "anything")
    test.assert_not_nil(reply.error)
    test.assert_match(reply.error, "^failed to call OnMessage function: ")
    test.assert_contains(reply.error, "attempt to call global 'this_function_does_not_exist'")
    test.assert_equal(reply.payload, "")
end

function test_over_http_the_error_is_in_the_json_results()
    local response = test.http("POST", "/funcs.fail", "anything")
    test.assert_equal(response.status, 200)
    test.assert_match(require("json").decode(response.body)[1].error, "^failed to call OnMessage function: ")
end

-- assert_error checks that a function raises, and returns the error's text.
function test_assert_error_returns_the_error()
    local err = test.assert_error(function() error({ code = 42 }) end)
    test.assert_match(err, "^table: ")
    test.assert_error(function() test.assert_equal(1, 2) end, "expected 2, got 1")
end
