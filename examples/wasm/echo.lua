-- Echo the payload back, from a module written by hand in the WebAssembly text format
-- (wat/echo.wat): msgscript compiles `.wat` files itself, no build step needed.
--* subject: funcs.wasm_echo
--* name: echo
--* executor: wasm
examples/wasm/wat/echo.wat
