--* subject: funcs.podman
--* name: podman_echo
--* executor: podman
{
  "image": "localhost/msgscript-busybox:latest",
  "command": [
    "sh", "-c",
    "printf 'subject=%s method=%s url=%s\\n' \"$SUBJECT\" \"$METHOD\" \"$URL\"; printf 'payload='; cat"
  ]
}
