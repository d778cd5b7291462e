"""The device identity of an mTLS client certificate: its SAN URI ``slimsplit://device/ID``, else its common name.

gRPC has verified the certificate against the configured CA bundle before a call reaches a handler; this module only
reads the identity out of the PEM that gRPC puts in the call's auth context (``x509_pem_cert``), with the
``cryptography`` package. Parsed certificates are cached by their PEM bytes (a connection's calls share one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

#: The SAN URI of a device certificate: this prefix and the device id (``slimsplit-certs device`` writes it).
DEVICE_URI_PREFIX = "slimsplit://device/"
_MAX_ID = 128


def device_id_of(cert: x509.Certificate) -> str | None:
    """The device id of ``cert``: the first SAN URI ``slimsplit://device/ID``, else its CN; None if it has neither
    (or the id is empty or longer than 128 characters)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(DEVICE_URI_PREFIX):
                found = uri[len(DEVICE_URI_PREFIX) :]
                return found if 0 < len(found) <= _MAX_ID else None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        return text if 0 < len(text) <= _MAX_ID else None
    return None


class IdentityCache:
    """``auth context -> device id`` with the parsed certificates of the last ``size`` PEMs kept."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._ids: OrderedDict[bytes, str | None] = OrderedDict()

    def device_id(self, auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
        """The device id of the peer's certificate; None when the peer presented none (plaintext, or TLS without
        client certificates) or it names no device."""
        pem = next(iter(auth_context.get("x509_pem_cert", ())), None)
        if not pem:
            return None
        if pem in self._ids:
            self._ids.move_to_end(pem)
            return self._ids[pem]
        try:
            found = device_id_of(x509.load_pem_x509_certificate(pem))
        except ValueError:
            found = None
        self._ids[pem] = found
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return found


__all__ = ["DEVICE_URI_PREFIX", "IdentityCache", "device_id_of"]
