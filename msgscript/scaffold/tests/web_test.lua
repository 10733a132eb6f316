-- The web application of scripts/web.lua, through HTTP as the gateway serves it.
local test = require("test")

function test_page()
    local response = test.http("GET", "/web/")
    test.assert_equal(response.status, 200)
    test.assert_match(response.body, "It works")
end

function test_json_route()
    local response = test.http("GET", "/web/api/hello?name=Ada")
    test.assert_equal(response.status, 200)
    test.assert_equal(response.body, '{"greeting":"Hello, Ada!"}')
end

function test_json_body()
    local response = test.http("POST", "/web/api/hello", '{"name":"Grace"}')
    test.assert_equal(response.status, 200)
    test.assert_equal(response.body, '{"greeting":"Hello, Grace!"}')
end

function test_a_missing_name_is_a_400()
    local response = test.http("GET", "/web/api/hello")
    test.assert_equal(response.status, 400)
    test.assert_equal(response.body, '{"error":"name is required"}')
end
