-- A C program compiled to WebAssembly (c/hello.c) that greets the payload: build it with
-- `make -C examples/wasm`. The module path is relative to the daemon's working directory, so
-- start the daemon from the repository root: `msgscript -script examples/wasm`.
--* subject: funcs.wasm
--* name: wasm
--* executor: wasm
examples/wasm/c/hello.wasm
