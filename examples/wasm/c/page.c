/*
 * An HTML page from a wasm function.
 *
 * Instead of a plain payload the program prints a JSON ScriptResult:
 *   {"http_code":200,"http_headers":{...},"is_html":true,"payload":"<the page, base64>"}
 * The HTTP gateway answers with that status, those headers and the decoded page
 * (Content-Type text/html unless the headers say otherwise).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable, NUL-terminated byte buffer. */
struct buffer {
    char *data;
    size_t len, cap;
};

static void append(struct buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL) {
            fputs("out of memory\n", stderr);
            exit(1);
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void append_text(struct buffer *b, const char *s) { append(b, s, strlen(s)); }

/* Append text with the characters that mean something in HTML escaped. */
static void append_escaped(struct buffer *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': append_text(b, "&amp;"); break;
        case '<': append_text(b, "&lt;"); break;
        case '>': append_text(b, "&gt;"); break;
        case '"': append_text(b, "&quot;"); break;
        case '\'': append_text(b, "&#39;"); break;
        default: append(b, s, 1);
        }
    }
}

/* Print bytes as standard base64 with padding, the encoding of the ScriptResult payload. */
static void print_base64(const unsigned char *s, size_t n) {
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned long v = (unsigned long)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned long)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        putchar(digits[(v >> 18) & 63]);
        putchar(digits[(v >> 12) & 63]);
        putchar(i + 1 < n ? digits[(v >> 6) & 63] : '=');
        putchar(i + 2 < n ? digits[v & 63] : '=');
    }
}

static const char *env(const char *name) {
    const char *value = getenv(name);
    return value ? value : "";
}

int main(void) {
    const char *method = env("METHOD");
    const char *url = env("URL");
    struct buffer page = {0};
    int code = 200;

    append_text(&page, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>msgscript wasm</title></head>\n"
                       "<body>\n");
    /* A plain NATS message has no method: answer it like a GET. */
    if (method[0] == '\0' || strcmp(method, "GET") == 0) {
        append_text(&page, "<h1>Hello from Wasm!</h1>\n<p>A C program compiled to WebAssembly wrote this page"
                           " for <code>");
        append_escaped(&page, url[0] ? url : "/");
        append_text(&page, "</code>.</p>\n");
    } else {
        code = 405;
        append_text(&page, "<h1>Method not allowed</h1>\n<p>This page answers GET, not <code>");
        append_escaped(&page, method);
        append_text(&page, "</code>.</p>\n");
    }
    append_text(&page, "</body></html>\n");

    printf("{\"http_code\":%d,\"http_headers\":{\"Cache-Control\":\"no-store\"},\"is_html\":true,\"payload\":\"", code);
    print_base64((const unsigned char *)page.data, page.len);
    printf("\"}\n");
    free(page.data);
    return 0;
}
