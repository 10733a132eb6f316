"""TLS and credential files for the clients of NATS and etcd: read once at startup, with one clear error each."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from msgscript.errors import ConfigError

_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def describe_os_error(exc: OSError) -> str:
    """An OS or TLS error's text without the errno number, OpenSSL's error code and source position."""
    text = _SSL_SOURCE.sub("", str(exc.strerror or exc))
    if isinstance(exc, ssl.SSLError):
        text = text.split("] ", 1)[-1]
    return text


def read_file(path: str, what: str) -> bytes:
    """The bytes of a file named by a setting; `what` names it in the error (e.g. `etcd CA file`).

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {describe_os_error(exc)}") from exc


def read_text_file(path: str, what: str) -> str:
    """The UTF-8 text of a file named by a setting.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8 text.
    """
    try:
        return read_file(path, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the {what} {path} is not a text file") from exc


def client_tls_context(service: str, ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client context that verifies the server against ca_file (the system's CAs without one) and, with
    cert_file and key_file, shows our certificate (mutual TLS). `service` names the server in errors.

    Raises:
        ConfigError: a file cannot be read, is not PEM, or the key does not belong to the certificate.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except OSError as exc:
        raise ConfigError(f"cannot use the {service} CA file {ca_file}: {describe_os_error(exc)}") from exc
    if cert_file or key_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except OSError as exc:
            reason = describe_os_error(exc)
            if reason == "PEM lib":  # OpenSSL's word for "not PEM", or a key that is not the certificate's
                reason = "not a PEM certificate and its private key"
            raise ConfigError(
                f"cannot use the {service} client certificate {cert_file} with the key {key_file}: {reason}"
            ) from exc
    return context
