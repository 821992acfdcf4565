"""The collector's certificate authority, its server certificate, and enrolment tokens.

The collector's state directory (0700) holds ca.key/ca.pem (a P-256 CA made on first
start), server.key/server.pem (for the names and addresses it listens on) and keys/, the
verification keys (k_0) of the enrolled hosts' journals: they authenticate the seals, so
they live here, not in the database an administrator of PostgreSQL could edit.

A token is `sgft1:SECRET:CAFP`: a one-time secret (its sha256 is in the database, with an
expiry) and the SHA-256 fingerprint of the CA certificate, so `fleet enroll` pins the
collector with nothing else: it fetches the CA certificate, checks the fingerprint, and
from then on talks TLS verified against that CA only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sockgate import safedir
from sockgate.errors import FleetError, UsageError

TOKEN_PREFIX = "sgft1"
CA_KEY, CA_CERT, SERVER_KEY, SERVER_CERT = "ca.key", "ca.pem", "server.key", "server.pem"
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VALID = dt.timedelta(days=3650)


def check_host_name(name: str) -> str:
    if not isinstance(name, str) or not HOST_NAME_RE.match(name):
        raise UsageError(f"host name {name!r:.80}: use 1-63 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return name


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sockgate fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, state: Path):
        self.key, self.cert, self.state = key, cert, state

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return cert_fingerprint(self.cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def open(cls, state: str | os.PathLike, *, create: bool = True) -> "CA":
        d = Path(state)
        if not d.exists() and not create:
            raise FleetError(f"{d}: no collector state here (start `sockgate collector --state {d}` first)")
        safedir.private_dir(d, error=FleetError, what="collector state directory")
        (d / "keys").mkdir(mode=0o700, exist_ok=True)
        if not (d / CA_KEY).exists():
            if not create:
                raise FleetError(f"{d}: no CA here")
            key = ec.generate_private_key(ec.SECP256R1())
            now = dt.datetime.now(dt.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(_name("sockgate fleet CA")).issuer_name(_name("sockgate fleet CA"))
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                    .sign(key, hashes.SHA256()))
            _write_private(d / CA_KEY, _key_pem(key))
            safedir.write_atomic(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
        try:
            key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
            cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        except (OSError, ValueError) as e:
            raise FleetError(f"{d}: cannot read the collector's CA: {e}") from None
        return cls(key, cert, d)

    def _issue(self, cn: str, public_key, *, server_names: list[str] | None = None) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server_names is not None:
            alt: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            b = (b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def server_files(self, names: list[str]) -> tuple[Path, Path]:
        """server.pem/server.key for these names (re-issued when the names change)."""
        d = self.state
        want = sorted(set(names))
        if (d / SERVER_CERT).exists():
            try:
                cert = x509.load_pem_x509_certificate((d / SERVER_CERT).read_bytes())
                have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                if sorted(str(v) for v in have.get_values_for_type(x509.DNSName)) + sorted(
                        str(v) for v in have.get_values_for_type(x509.IPAddress)) == sorted(
                        [n for n in want if not _is_ip(n)]) + sorted([str(ipaddress.ip_address(n)) for n in want if _is_ip(n)]):
                    return d / SERVER_CERT, d / SERVER_KEY
            except (ValueError, x509.ExtensionNotFound):
                pass
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue("sockgate collector", key.public_key(), server_names=want)
        _write_private(d / SERVER_KEY, _key_pem(key))
        safedir.write_atomic(d / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
        return d / SERVER_CERT, d / SERVER_KEY

    def sign_csr(self, csr_pem: bytes, name: str) -> tuple[bytes, str]:
        """A client certificate for `name` (the CSR's own subject is ignored: the host's name
        is the one the enrolment gave). Returns (PEM, fingerprint of its DER)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise FleetError("enrolment: the certificate request is not a PEM CSR") from None
        if not csr.is_signature_valid:
            raise FleetError("enrolment: the certificate request's signature does not check")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise FleetError("enrolment: the certificate request must carry an EC (P-256) key")
        cert = self._issue(name, csr.public_key())
        return cert.public_bytes(serialization.Encoding.PEM), cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))

    def key_path(self, name: str) -> Path:
        return self.state / "keys" / f"{check_host_name(name)}.vkey"


def _is_ip(n: str) -> bool:
    try:
        ipaddress.ip_address(n)
        return True
    except ValueError:
        return False


# -- tokens ---------------------------------------------------------------------------------

def new_token(ca_fingerprint: str) -> tuple[str, bytes]:
    """(token text, sha256 of its secret for the database)."""
    secret = secrets.token_urlsafe(24)
    return f"{TOKEN_PREFIX}:{secret}:{ca_fingerprint}", token_hash(secret)


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(b"sockgate-fleet-token" + secret.encode()).digest()


def parse_token(text: str) -> tuple[str, str]:
    """(secret, CA fingerprint) from a token; a UsageError for anything else."""
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not re.fullmatch(r"[0-9a-f]{64}", parts[2]) or not parts[1]:
        raise UsageError(f"--token: not a sockgate fleet token (expected {TOKEN_PREFIX}:SECRET:CA-FINGERPRINT, "
                         "as `sockgate fleet token` prints it)")
    return parts[1], parts[2]


# -- the host side --------------------------------------------------------------------------

def new_client_key() -> tuple[bytes, bytes]:
    """(private key PEM, CSR PEM) for enrolment."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name("sockgate host")).sign(key, hashes.SHA256())
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def pem_fingerprint(pem: bytes) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise FleetError("not a PEM certificate") from None
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))
