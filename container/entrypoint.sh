#!/bin/sh
# The image's entrypoint: `server [args]` runs the daemon with the bundled plugins and libraries, `cli [args]` runs
# msgscriptcli with the arguments as given.
set -eu

BIN=/opt/msgscript/venv/bin
SHARE=/opt/msgscript/share/msgscript

usage() {
    cat <<USAGE
Usage: <image> <command> [args...]

Commands:
  server [args]   run the msgscript daemon (bundled plugins and libraries loaded; msgscript -h lists the flags)
  cli [args]      run msgscriptcli with the given arguments
  help            show this help

Examples:
  <image> server -script /scripts
  <image> server -natsurl nats://nats.example:4222 -port 8080
  <image> cli --help
  <image> cli dev -i John /scripts/hello.lua
USAGE
}

if [ "$#" -eq 0 ]; then
    echo "Error: No command specified." >&2
    usage >&2
    exit 1
fi

cmd="$1"
shift
case "$cmd" in
    server)
        # Our defaults come first: a -plugin or -library given by the user wins (the last one counts).
        exec "$BIN/msgscript" -plugin "$SHARE/plugins" -library "$SHARE/libraries" "$@"
        ;;
    cli)
        # dev and devhttp run a script in this container: give them the bundled plugins and libraries too.
        if [ "$#" -gt 0 ] && { [ "$1" = dev ] || [ "$1" = devhttp ]; }; then
            sub="$1"
            shift
            exec "$BIN/msgscriptcli" "$sub" --pluginDir "$SHARE/plugins" --library "$SHARE/libraries" "$@"
        fi
        exec "$BIN/msgscriptcli" "$@"
        ;;
    help | -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "Error: Unknown command '$cmd'" >&2
        usage >&2
        exit 1
        ;;
esac
