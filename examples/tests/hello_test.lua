-- Tests of the examples, run by `msgscriptcli test` (docs/develop.md). From the repository's root:
--   msgscriptcli --script examples test -p plugins examples/tests
-- Each global function named test_* is a test; they run in the order they are written, each in a fresh
-- environment (this file runs again before each one).
local test = require("test")

function test_hello_answers_with_its_subject_and_payload()
    local reply = test.invoke("funcs.hello", "John")
    test.assert_nil(reply.error)
    test.assert_equal(reply.payload, "Processed subject: funcs.hello with payload: John")
end

function test_every_script_of_the_subject_answers()
    local reply = test.invoke("funcs.hello", "")
    test.assert_equal(#reply.results, 1)
    test.assert_equal(reply.results[1].status, 0, "a script that is not HTML has no status")
    test.assert_false(reply.results[1].html)
end

function test_a_subject_without_scripts_is_an_error()
    local reply = test.invoke("funcs.nobody", "John")
    test.assert_match(reply.error, "script not found for subject: funcs%.nobody")
    test.assert_equal(reply.results, {})
end

function test_hello_over_http()
    local response = test.http("POST", "/funcs.hello", "Ada")
    test.assert_equal(response.status, 200)
    -- The gateway answers the JSON array of results, payloads in base64.
    local results = require("json").decode(response.body)
    test.assert_equal(results[1].error, "")
    test.assert_equal(results[1].payload, "UHJvY2Vzc2VkIHN1YmplY3Q6IGZ1bmNzLmhlbGxvIHdpdGggcGF5bG9hZDogQWRh")
end

function test_an_unknown_subject_over_http_is_a_404()
    local response = test.http("GET", "/funcs.nobody")
    test.assert_equal(response.status, 404)
    test.assert_equal(response.body, "Error: no script found for subject funcs.nobody")
end
