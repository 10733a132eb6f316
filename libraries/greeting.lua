--* name: greeting
-- A library: scripts that say `--* require: greeting` get these globals prepended.
function Greeting(name)
    return "Hello, " .. name .. "!"
end
