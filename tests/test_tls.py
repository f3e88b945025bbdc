"""HTTPS with certificates made in the test: TLS 1.2 or newer, client certificates, plain HTTP rejected."""

import datetime
import ipaddress
import socket
import ssl
import urllib.parse

import pytest

from poller_server.config import Config
from poller_server.tls import make_ssl_context

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path):
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))


def _write_cert(cert, path):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(subject, public_key, issuer_name, issuer_key, is_ca, usage=None, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("poller test CA", ca_key.public_key(), _name("poller test CA"), ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "127.0.0.1", server_key.public_key(), ca_cert.subject, ca_key, False, ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("runner-1", client_key.public_key(), ca_cert.subject, ca_key, False,
                         ExtendedKeyUsageOID.CLIENT_AUTH)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "server", "server-key", "client", "client-key")}
    _write_cert(ca_cert, paths["ca"])
    _write_cert(server_cert, paths["server"])
    _write_key(server_key, paths["server-key"])
    _write_cert(client_cert, paths["client"])
    _write_key(client_key, paths["client-key"])
    return paths


def client_context(pki, with_certificate=False):
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_certificate:
        context.load_cert_chain(str(pki["client"]), str(pki["client-key"]))
    return context


def address(server):
    parsed = urllib.parse.urlsplit(server.url)
    return parsed.hostname, parsed.port


def test_context_requires_tls12(pki, tmp_path):
    config = Config(data_dir=str(tmp_path), certfile=str(pki["server"]), keyfile=str(pki["server-key"]))
    context = make_ssl_context(config)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE


def test_context_without_certfile_is_none(tmp_path):
    assert make_ssl_context(Config(data_dir=str(tmp_path))) is None


def test_https_request_succeeds(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]))
    assert server.url.startswith("https://")
    created = server.call("POST", request="new", user="jdoe", ssl_context=client_context(pki))
    assert created.code == 200, created
    listing = server.call("GET", request="all", ssl_context=client_context(pki))
    assert [job["job_id"] for job in listing.json] == [1]


def test_tls12_client_is_accepted(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]))
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(address(server), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_is_rejected(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki["ca"]))
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1 as a client: {exc}")
    with socket.create_connection(address(server), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as error:
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    if "NO_PROTOCOLS_AVAILABLE" in str(error.value).upper():
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1 as a client: {error.value}")
    assert "PROTOCOL_VERSION" in str(error.value).upper()


def test_plain_http_to_tls_port_gets_no_response(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]))
    received = b""
    with socket.create_connection(address(server), timeout=10) as plain:
        plain.sendall(b"GET /poller/update/?request=all HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert not received.startswith(b"HTTP/")
    assert b"[" not in received
    # The server goes on serving TLS clients.
    assert server.call("GET", request="all", ssl_context=client_context(pki)).code == 200


def test_client_certificate_required_with_ca_file(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(pki["server-key"]),
                            "--ca-file", str(pki["ca"]))
    assert "TLS with client certificates" in next(line for line in server.lines if "Poller listening" in line)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        with socket.create_connection(address(server), timeout=10) as raw:
            with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # TLS 1.3 clients learn of the rejected certificate only at the first read.
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                if not tls.recv(1024):
                    raise ConnectionResetError("server closed the connection")
    response = server.call("GET", request="all", ssl_context=client_context(pki, with_certificate=True))
    assert response.code == 200


def test_missing_key_stops_start(server_factory, pki, tmp_path):
    server = server_factory("--certfile", str(pki["server"]), "--keyfile", str(tmp_path / "missing.pem"),
                            expect_listening=False)
    assert server.wait_exit() == 1
    assert "Poller cannot start" in server.log
    assert "Poller listening" not in server.log


def test_certfile_without_keyfile_is_usage_error(server_factory, pki):
    server = server_factory("--certfile", str(pki["server"]), expect_listening=False)
    assert server.wait_exit() == 2
    assert "--certfile and --keyfile must be given together" in server.log
