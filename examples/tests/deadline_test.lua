-- examples/deadline.lua has `--* timeout: 1s`: a runaway loop is stopped at its deadline.
local test = require("test")

function test_finishes_in_time()
    test.assert_equal(test.invoke("funcs.deadline", "quick").payload, "finished in time")
end

function test_a_runaway_loop_times_out()
    local reply = test.invoke("funcs.deadline", "loop")
    test.assert_equal(reply.error, "script timed out after 1s")
end
