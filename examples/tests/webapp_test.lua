-- examples/webapp.lua, an HTML-mode application on libraries/web.lua. test.http asks the HTTP gateway as a
-- browser would; redirects are answered, not followed.
local test = require("test")

function test_the_home_page_has_the_form()
    local response = test.http("GET", "/http.webapp/")
    test.assert_equal(response.status, 200)
    test.assert_equal(response.headers["Content-Type"], "text/html")
    test.assert_contains(response.body, '<form method="post" action="/http.webapp/greet">')
end

function test_a_greeting_page_escapes_the_name()
    local response = test.http("GET", "/http.webapp/hello/%3Cb%3EAda")
    test.assert_equal(response.status, 200)
    test.assert_contains(response.body, "<h1>Hello, &lt;b&gt;Ada!</h1>")
end

function test_the_form_redirects_to_the_greeting()
    local response = test.http("POST", "/http.webapp/greet", "name=Ada+Lovelace", {
        ["Content-Type"] = "application/x-www-form-urlencoded",
    })
    test.assert_equal(response.status, 302)
    test.assert_equal(response.headers["Location"], "/http.webapp/hello/Ada%20Lovelace")
end

function test_the_api_answers_json()
    local response = test.http("GET", "/http.webapp/api/hello/world")
    test.assert_equal(response.status, 200)
    test.assert_equal(require("json").decode(response.body), { greeting = "Hello, world!", name = "world" })
end

-- test.invoke calls an HTML-mode script with a method and a URL, as a NATS envelope would.
function test_invoke_with_a_method_and_url()
    local reply = test.invoke("http.webapp", "", "GET", "/hello/Bob")
    test.assert_nil(reply.error)
    test.assert_true(reply.results[1].html)
    test.assert_equal(reply.results[1].status, 200)
    test.assert_contains(reply.payload, "<h1>Hello, Bob!</h1>")
end
