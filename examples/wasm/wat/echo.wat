;; Echo: answer with the payload of the message, read from the PAYLOAD environment variable.
;;
;; A module in the WebAssembly text format: msgscript compiles `.wat` files itself, so this one
;; needs no build step. It shows the whole ABI by hand: environ_sizes_get/environ_get for the
;; environment, fd_write on stdout (fd 1) for the result, and an exported `_start`.
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))

  ;; Memory layout: 0 variable count, 4 size of all "NAME=value\0" strings, 8 an iovec (pointer,
  ;; length), 16 bytes written, 32 the prefix searched for, 64 the pointer array, then the strings.
  (memory (export "memory") 1)
  (data (i32.const 32) "PAYLOAD=")

  ;; 1 when the string at $entry starts with "PAYLOAD=", else 0.
  (func $is_payload (param $entry i32) (result i32)
    (local $i i32)
    (block $different
      (loop $next
        (br_if $different
          (i32.ne (i32.load8_u (i32.add (local.get $entry) (local.get $i)))
                  (i32.load8_u (i32.add (i32.const 32) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const 8))))
      (return (i32.const 1)))
    (i32.const 0))

  ;; Length of the NUL-terminated string at $s.
  (func $strlen (param $s i32) (result i32)
    (local $n i32)
    (block $end
      (loop $next
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func (export "_start")
    (local $count i32) (local $strings i32) (local $end i32) (local $i i32) (local $value i32)
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (local.set $count (i32.load (i32.const 0)))
    (local.set $strings (i32.add (i32.const 64) (i32.mul (local.get $count) (i32.const 4))))
    ;; Make room for the pointers and the strings (the payload can be large).
    (local.set $end (i32.add (local.get $strings) (i32.load (i32.const 4))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16)) (i32.const 1))
                                          (memory.size)))
                    (i32.const -1))
          (then unreachable))))
    (drop (call $environ_get (i32.const 64) (local.get $strings)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $value (i32.load (i32.add (i32.const 64) (i32.mul (local.get $i) (i32.const 4)))))
        (if (call $is_payload (local.get $value))
          (then
            (local.set $value (i32.add (local.get $value) (i32.const 8)))
            (i32.store (i32.const 8) (local.get $value))
            (i32.store (i32.const 12) (call $strlen (local.get $value)))
            (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))
            (br $done)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))
