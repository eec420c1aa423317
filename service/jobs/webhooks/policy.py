"""Which webhook URLs and addresses are allowed, and the check made at SubmitEdit.

A URL: https only (http with webhook_allow_http), a host that is an address or a valid DNS
name (labels of 1 to 63 characters, 253 in all), no userinfo, at most MAX_URL_LENGTH
characters, a valid port, no fragment. An address: public only (loopback, link-local, private
and reserved with webhook_allow_private; multicast and unspecified never), IPv4 inside IPv6
judged as that IPv4. A literal address in the URL is judged at submit; a name, by every address
it resolves to at delivery (`checked_addresses`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import urllib.parse

from service.errors import InvalidArgument
from service.jobs.webhooks.signing import SecretSource
from service.tenancy.tenants import SecretError

log = logging.getLogger(__package__)  # the name the logs gave before the module became a package
FIELD = "job.webhook_url"
MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH, MAX_LABEL_LENGTH = 253, 63  # a DNS name, and each of its labels (RFC 1035)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The host resolves to an address webhooks may not reach."""


def forbidden(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why webhooks may not reach this address (None: they may)."""
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 carried inside IPv6 is judged as that IPv4
        teredo = ip.teredo or ()
        for embedded in (ip.ipv4_mapped, ip.sixtofour, *teredo):
            if embedded is not None and (reason := forbidden(embedded, allow_private)):
                return reason
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if allow_private:
        return None
    for kind in ("loopback", "link_local", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def literal_ip(host: str) -> IPAddress | None:
    """The address a host names literally ("10.0.0.1", "::1", and the legacy forms the resolver
    takes for IPv4: "127.1", "2130706433", "0x7f.0.0.1"), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def bad_host_name(host: str) -> str | None:
    """Why a host is not a name the resolver takes (None: it is, or it is a literal address): an
    empty label ("a..b", ".a"), a label over 63 characters or a name over 253."""
    if literal_ip(host) is not None or ":" in host:  # an address, IPv6 in brackets included
        return None
    name = host[:-1] if host.endswith(".") else host  # one final dot: a fully qualified name
    if len(name) > MAX_HOST_LENGTH:
        return f"at most {MAX_HOST_LENGTH} characters, got {len(name)}"
    for label in name.split("."):
        if not label:
            return "an empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL_LENGTH:
            return f"a label of {len(label)} characters (at most {MAX_LABEL_LENGTH})"
    return None


def check_url(url: str, allow_http: bool = False, allow_private: bool = False) -> urllib.parse.SplitResult:
    """The parsed URL; raises InvalidArgument naming job.webhook_url."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(FIELD, f"at most {MAX_URL_LENGTH} characters, got {len(url)}")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise InvalidArgument(FIELD, "ASCII without spaces or control characters (an international host name in "
                                     "punycode, other characters %-encoded)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(FIELD, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        raise InvalidArgument(FIELD, "must start with https://" + ("" if allow_http else
                                                                   " (http:// only with --webhook-allow-http)"))
    if "@" in parts.netloc:
        raise InvalidArgument(FIELD, "no user or password in the URL (user:password@host): the receiver checks "
                                     "the Sdedit-Signature header instead")
    if not parts.hostname:
        raise InvalidArgument(FIELD, "needs a host (https://host[:port]/path)")
    if port == 0:
        raise InvalidArgument(FIELD, "the port must be in [1, 65535]")
    if (reason := bad_host_name(parts.hostname)) is not None:
        raise InvalidArgument(FIELD, f"the host {parts.hostname!r} is not a valid DNS name: {reason}")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument(FIELD, "no #fragment (it is never sent)")
    ip = literal_ip(parts.hostname)
    if ip is not None and (reason := forbidden(ip, allow_private)):
        raise InvalidArgument(FIELD, f"{parts.hostname} is a {reason} address: webhooks reach public addresses "
                                     "only (the operator may allow others with --webhook-allow-private)")
    return parts


def check_submit(url: str, owner: str, secret_of: SecretSource, allow_http: bool = False,
                 allow_private: bool = False) -> None:
    """At SubmitEdit: the URL is acceptable and the caller has a secret to sign with."""
    check_url(url, allow_http, allow_private)
    try:
        secret = secret_of(owner)
    except SecretError as exc:
        log.error("webhooks: tenant %r: %s", owner, exc)
        raise InvalidArgument(FIELD, "the webhook secret configured for this caller cannot be used now; the "
                                     "operator must fix it (the service logged why)") from None
    if secret is None:
        raise InvalidArgument(FIELD, (
            f"tenant {owner!r} has no webhook signing secret: the operator gives it `webhook_secret_file` in "
            "the tokens file (docs/webhooks.md)") if owner else (
            "no webhook signing secret is configured: start the service with --webhook-secret-file FILE "
            "(docs/webhooks.md)"))


def checked_addresses(host: str, port: int, allow_private: bool = False) -> list[tuple[int, tuple]]:
    """Every address the host resolves to, each checked, as (family, sockaddr); raises
    AddressRefused if any may not be reached, socket.gaierror if the name does not resolve."""
    found = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        reason = forbidden(ipaddress.ip_address(sockaddr[0]), allow_private)
        if reason:
            raise AddressRefused(f"{host} resolves to {sockaddr[0]}, a {reason} address")
        if (family, sockaddr) not in found:
            found.append((family, sockaddr))
    return found


def host_of(url: str) -> str:
    """What the logs say of a URL: its host and port, never its path or query."""
    try:
        return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or "?"
    except ValueError:
        return "?"
