-- An HTML page written by a C program compiled to WebAssembly (c/page.c): it prints a JSON
-- ScriptResult with is_html set, so `GET /http.wasm/anything` on the HTTP gateway serves the page.
--* subject: http.wasm
--* name: page
--* executor: wasm
examples/wasm/c/page.wasm
