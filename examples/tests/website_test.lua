-- examples/website.lua renders pages with the template plugin: run with -p plugins.
local test = require("test")

function test_a_page_of_the_site()
    local response = test.http("GET", "/http.website/foobar")
    test.assert_equal(response.status, 200)
    test.assert_match(response.body, "<title>foobar yo</title>")
end

function test_an_unknown_page_is_a_404()
    local response = test.http("GET", "/http.website/elsewhere?x=1")
    test.assert_equal(response.status, 404)
    test.assert_equal(response.headers["Content-Type"], "text/plain")
    test.assert_equal(response.body, "no page at /elsewhere")
end
