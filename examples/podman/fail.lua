--* subject: funcs.podman_fail
--* name: podman_fail
--* executor: podman
{
  "image": "localhost/msgscript-busybox:latest",
  "command": ["sh", "-c", "echo 'half done'; echo 'something broke' >&2; exit 3"]
}
