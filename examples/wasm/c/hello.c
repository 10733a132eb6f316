/*
 * The smallest useful wasm function: greet whoever the payload names.
 *
 * msgscript hands the message to the program in its environment (SUBJECT, PAYLOAD, METHOD, URL)
 * and runs main(). What it prints on stdout is the result payload; what it prints on stderr
 * becomes the result error.
 */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *subject = getenv("SUBJECT");
    const char *payload = getenv("PAYLOAD");

    if (payload == NULL || payload[0] == '\0') {
        fputs("send a name as the payload\n", stderr);
        return 0;
    }
    printf("Hello from C, %s! (subject %s)", payload, subject ? subject : "");
    return 0;
}
