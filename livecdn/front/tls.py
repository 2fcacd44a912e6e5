"""TLS contexts: a listener's certificates chosen by SNI and re-read on SIGHUP, and upstream trust.

What a TLS listener needs from Python's `ssl` is built here and nowhere else:

- one `ssl.SSLContext` per certificate, with the same modern settings
  (TLS 1.2 at least, TLS 1.3 when the client has it, AEAD suites with forward
  secrecy only, no compression or renegotiation, session tickets on) and the
  ALPN list of the protocols the listener speaks (`PLAYER_ALPN`, h2 first,
  for player listeners; `HTTP1_ALPN` for the router's aiohttp listener);
- the *listening* context, which the socket keeps for its whole life: its
  SNI callback hands each new handshake the context of the certificate for the
  name asked (`choose`: exact name, then a one-label wildcard, then the
  first certificate). Reloading swaps the table the callback reads, so new
  handshakes get the new certificates while open connections keep theirs, and
  session tickets (keyed by the listening context) stay valid across reloads;
- every file problem found when the files are read (start, reload), never at
  a player's first handshake: `CertificateError` names the key of the
  certificate (`certificates[0].key`) and says what is wrong with which file.

`choose` is pure; the rest reads files and builds contexts, and does no
socket I/O (the listener hands `context` to the event loop).
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from livecdn.config import ConfigError
from livecdn.config.schema import Certificate, TlsSettings

__all__ = ["HTTP1_ALPN", "PLAYER_ALPN", "CertificateError", "ServerTls", "TLS12_CIPHERS", "choose", "client_context",
           "read_certificates"]

log = logging.getLogger("livecdn.front.tls")

# What the listener advertises in ALPN while it speaks HTTP/1.1 only; a node with HTTP/2 passes ("h2", "http/1.1").
HTTP1_ALPN: tuple[str, ...] = ("http/1.1",)
# A player listener: HTTP/2 when the client offers it (`PlayerConnection` hands the connection to
# `listener_h2`), else HTTP/1.1.
PLAYER_ALPN: tuple[str, ...] = ("h2", "http/1.1")
# TLS 1.2 suites (Mozilla's "intermediate" list): ECDHE key exchange and AEAD ciphers only. TLS 1.3's
# suites are all of that kind already, and OpenSSL's defaults for them stay.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")

T = TypeVar("T")


class CertificateError(ValueError):
    """A certificate, key or CA file that cannot be used; `key` is where in the TLS table (`certificates[0].key`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem

    def config_error(self, path: str, table: str) -> ConfigError:
        """As a topology error: "file: table.key: problem"."""
        return ConfigError(path, f"{table}.{self.key}", self.problem)


def choose(table: Mapping[str, T], default: T, name: str | None) -> T:
    """What serves `name` (an SNI host name; None when the client sent none).

    An exact name first, then a wildcard for its first label (`*.example.com`
    serves `a.example.com`, not `example.com` nor `a.b.example.com`), then `default`.
    """
    if not name:
        return default
    name = name.rstrip(".").lower()
    found = table.get(name)
    if found is None and "." in name:
        found = table.get("*." + name.split(".", 1)[1])
    return default if found is None else found


def _server_context(alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(key, f"{path}: cannot read: {e.strerror or e}") from None


def _load(i: int, cert: Certificate, alpn: Sequence[str]) -> tuple[tuple[str, ...], ssl.SSLContext]:
    """One certificate's host names and context; CertificateError says which file is wrong and how."""
    at = f"certificates[{i}]"
    cert_pem, key_pem = _read(f"{at}.cert", cert.cert), _read(f"{at}.key", cert.key)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError(f"{at}.cert", f"{cert.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(f"{at}.key", f"{cert.key}: the key is encrypted: give it unencrypted") from None
    except ValueError:
        raise CertificateError(f"{at}.key", f"{cert.key}: not a PEM private key") from None
    leaf = chain[0]
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
        raise CertificateError(f"{at}.key", f"{cert.key}: does not match the certificate in {cert.cert}")
    ctx = _server_context(alpn)
    try:
        ctx.load_cert_chain(cert.cert, cert.key)
    except (ssl.SSLError, OSError) as e:
        raise CertificateError(f"{at}.cert", f"{cert.cert}: {e}") from None
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        log.warning("%s: certificate expired on %s: clients will refuse it", cert.cert, leaf.not_valid_after_utc)
    return (tuple(n.lower() for n in cert.names) or _san_names(leaf)), ctx


def _san_names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))


class ServerTls:
    """The certificates of one TLS listener, and the context its socket listens with.

    Args:
        settings: the listener's `[*.tls]` table (its certificates are read now).
        alpn: the application protocols offered, best first.

    Raises:
        CertificateError: a file is missing, unreadable, no PEM, or a key does not match its certificate.
    """

    __slots__ = ("alpn", "context", "names", "_table", "_default")

    def __init__(self, settings: TlsSettings, alpn: Sequence[str] = HTTP1_ALPN) -> None:
        self.alpn = tuple(alpn)
        self._table: dict[str, ssl.SSLContext] = {}
        self._default: ssl.SSLContext
        self.names: tuple[str, ...] = ()  # every host name a certificate is chosen for
        self.reload(settings)
        self.context = _server_context(self.alpn)
        first = settings.certificates[0]
        self.context.load_cert_chain(first.cert, first.key)  # checked by reload(); the callback replaces it
        self.context.sni_callback = self._sni

    def reload(self, settings: TlsSettings) -> None:
        """Read every certificate again; the new table is used only when all of them load."""
        table: dict[str, ssl.SSLContext] = {}
        default: ssl.SSLContext | None = None
        for i, cert in enumerate(settings.certificates):
            names, ctx = _load(i, cert, self.alpn)
            default = default or ctx
            for name in names:
                table.setdefault(name, ctx)  # a name two certificates claim: the first one's
        assert default is not None  # TlsSettings has one certificate at least
        self._table, self._default, self.names = table, default, tuple(table)

    def _sni(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _listening: ssl.SSLContext) -> None:
        conn.context = choose(self._table, self._default, name)


def read_certificates(tls: TlsSettings | None, running: ServerTls | None, *, path: str, table: str,
                      alpn: Sequence[str] = HTTP1_ALPN) -> ServerTls | None:
    """A node's certificates read from their files: into `running` (a reload: all, or nothing changes), or anew.

    Raises:
        ConfigError: "path: table.certificates[i].key: problem" for a file that cannot be used.
    """
    try:
        if tls is None:
            return None
        if running is not None:
            running.reload(tls)
            return running
        return ServerTls(tls, alpn)
    except CertificateError as e:
        raise e.config_error(path, table) from None


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """How an upstream's certificate is verified: against `ca_file` (PEM), or the system's CAs when "".

    Verification is always on: an untrusted or mismatched certificate fails
    the connection (the fetch fails with a reason), it is never accepted.

    Raises:
        CertificateError: `ca_file` cannot be read or holds no certificate (key "ca_file").
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except FileNotFoundError as e:
        raise CertificateError("ca_file", f"{ca_file}: cannot read: {e.strerror}") from None
    except (ssl.SSLError, OSError) as e:
        raise CertificateError("ca_file", f"{ca_file}: no PEM CA certificates in it ({e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
