"""Secrets made by the tests themselves: a small PKI for TLS, NKeys, and NATS operator-mode JWTs and `.creds` files."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    """A certificate authority with a server certificate (127.0.0.1 and localhost) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    usages: list[x509.ObjectIdentifier],
    names: list[x509.GeneralName],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate for 127.0.0.1/localhost and a client certificate into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("msgscript test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "localhost",
        server_key,
        ca_name,
        ca_key,
        # etcd 3.4 dials itself (its HTTP gateway) with the server certificate: it must be good for clients too.
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("msgscript", client_key, ca_name, ca_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH], names=[])
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server-key.pem", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client-key.pem", client_key),
    )


# NATS NKeys and JWTs ---------------------------------------------------------------------------------------


def new_nkey(prefix: int) -> nkeys.KeyPair:
    """A fresh NKey of the given role (nkeys.PREFIX_BYTE_USER, _ACCOUNT, _OPERATOR)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public_key(key: nkeys.KeyPair) -> str:
    """The key's public form (U…, A…, O…)."""
    return bytes(key.public_key).decode()


def seed(key: nkeys.KeyPair) -> str:
    """The key's seed (S…), the secret a client signs with."""
    return bytes(key.seed).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """A NATS JWT (ed25519-nkey) carrying claims, signed by issuer."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = dict(claims, iss=public_key(issuer), iat=int(time.time()))
    body["jti"] = base64.b32encode(os.urandom(20)).decode().rstrip("=")
    signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


_NO_LIMIT = -1


@dataclass(frozen=True)
class Operator:
    """An operator with one account, ready for a nats-server configuration in operator mode."""

    operator: nkeys.KeyPair
    account: nkeys.KeyPair
    operator_jwt: str
    account_jwt: str

    def server_config(self, operator_jwt_path: Path) -> str:
        """The nats-server configuration lines: operator, an in-memory resolver preloaded with the account."""
        operator_jwt_path.write_text(self.operator_jwt)
        return (
            f'operator: "{operator_jwt_path}"\n'
            "resolver: MEMORY\n"
            f'resolver_preload: {{\n  {public_key(self.account)}: "{self.account_jwt}"\n}}\n'
        )

    def user_creds(self, path: Path, name: str = "msgscript") -> Path:
        """Write the `.creds` file of a new user of the account (its JWT and its seed)."""
        user = new_nkey(nkeys.PREFIX_BYTE_USER)
        claims = {
            "sub": public_key(user),
            "name": name,
            "nats": {
                "type": "user",
                "version": 2,
                "pub": {},
                "sub": {},
                "subs": _NO_LIMIT,
                "data": _NO_LIMIT,
                "payload": _NO_LIMIT,
            },
        }
        write_creds(path, encode_jwt(claims, self.account), seed(user))
        return path


def write_creds(path: Path, user_jwt: str, user_seed: str) -> Path:
    """A `.creds` file in the layout the nats tools write."""
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "Keep the seed below secret: whoever holds it can connect as this user.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return path


def make_operator() -> Operator:
    """A self-signed operator and an account it signed, without limits."""
    operator = new_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = encode_jwt(
        {"sub": public_key(operator), "name": "msgscript-test", "nats": {"type": "operator", "version": 2}}, operator
    )
    limits = {key: _NO_LIMIT for key in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}
    limits["wildcards"] = True
    account_jwt = encode_jwt(
        {
            "sub": public_key(account),
            "name": "functions",
            "nats": {"type": "account", "version": 2, "limits": limits, "default_permissions": {"pub": {}, "sub": {}}},
        },
        operator,
    )
    return Operator(operator, account, operator_jwt, account_jwt)
