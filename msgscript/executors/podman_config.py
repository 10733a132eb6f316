"""A podman script's container configuration: the JSON object of its content, decoded with Go's rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgscript import _gojson
from msgscript.script import HEADER_PREFIX


@dataclass(frozen=True, slots=True)
class Mount:
    """One OCI runtime-spec mount of the container configuration."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The `podman run` options that create this mount."""
        options = ",".join(self.options)
        if self.type in ("", "bind", "volume"):
            for path in (self.source, self.destination):
                if ":" in path:
                    raise ValueError(f"mount path {path!r} contains ':'")
            return ["--volume", f"{self.source}:{self.destination}" + (f":{options}" if options else "")]
        if self.type == "tmpfs":
            if ":" in self.destination:
                raise ValueError(f"mount path {self.destination!r} contains ':'")
            return ["--tmpfs", self.destination + (f":{options}" if options else "")]
        parts = [f"type={self.type}", f"destination={self.destination}"]
        if self.source:
            parts.append(f"source={self.source}")
        return ["--mount", ",".join([*parts, *self.options])]


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """What a podman script's content says about the container to run."""

    image: str
    mounts: tuple[Mount, ...] = ()
    command: tuple[str, ...] = ()
    privileged: bool = False
    user: str = ""
    groups: tuple[str, ...] = ()

    def run_options(self) -> list[str]:
        """The `podman run` options of this configuration, up to and including the image and command."""
        argv: list[str] = []
        if self.privileged:
            argv.append("--privileged")
        if self.user:
            argv += ["--user", self.user]
        for group in self.groups:
            argv += ["--group-add", group]
        for mount in self.mounts:
            argv += mount.argv()
        return [*argv, self.image, *self.command]


_CONFIG_FIELDS = frozenset({"image", "mounts", "command", "privileged", "user", "groups"})
_MOUNT_FIELDS = frozenset({"destination", "type", "source", "options"})


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be an array of strings")
    return tuple(_gojson.clean(item) for item in value)


def _mount(value: Any, index: int) -> Mount:
    if not isinstance(value, dict):
        raise ValueError(f"mounts[{index}] must be an object")
    found = _gojson.fields(value, _MOUNT_FIELDS)
    destination = _gojson.optional_str(found.get("destination"), f"mounts[{index}].destination")
    if not destination:
        raise ValueError(f"mounts[{index}].destination is required")
    return Mount(
        destination=destination,
        type=_gojson.optional_str(found.get("type"), f"mounts[{index}].type"),
        source=_gojson.optional_str(found.get("source"), f"mounts[{index}].source"),
        options=_strings(found.get("options"), f"mounts[{index}].options"),
    )


def parse_config(content: str) -> ContainerConfig:
    """Decode a podman script's content (header lines skipped), with Go's rules: keys match case-insensitively,
    unknown keys are ignored, null is the zero value.

    Raises:
        ValueError: the content is not a usable container configuration.
    """
    text = "\n".join(line for line in content.split("\n") if not line.startswith(HEADER_PREFIX))
    doc = _gojson.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("the configuration must be a JSON object")
    found = _gojson.fields(doc, _CONFIG_FIELDS)
    image = _gojson.optional_str(found.get("image"), "image")
    if not image or image.startswith("-"):
        raise ValueError("image must be an image reference")
    privileged = found.get("privileged")
    if privileged is not None and not isinstance(privileged, bool):
        raise ValueError("privileged must be a boolean")
    mounts = found.get("mounts")
    if mounts is not None and not isinstance(mounts, list):
        raise ValueError("mounts must be an array of mount objects")
    config = ContainerConfig(
        image=image,
        mounts=tuple(_mount(m, i) for i, m in enumerate(mounts or ())),
        command=_strings(found.get("command"), "command"),
        privileged=bool(privileged),
        user=_gojson.optional_str(found.get("user"), "user"),
        groups=_strings(found.get("groups"), "groups"),
    )
    config.run_options()  # mounts that podman's options cannot express fail here
    return config
