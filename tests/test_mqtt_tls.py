"""MqttLink over TLS against a real mosquitto TLS listener with client certificates.

The test makes its own CA, server and client certificates with `cryptography`.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edged.config import load_config
from edged.mqtt.link import MqttLink
from helpers.mqtt import free_port, start_broker_with


def _issue(subject: str, issuer_key, issuer_name, key, ca: bool = False, san: str = ""):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        import ipaddress
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


@pytest.fixture
def pki(tmp_path) -> Tuple[Path, Path, Path, Path, Path]:
    """(ca.pem, server.pem, server.key, client.pem, client.key)"""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("edged test CA", ca_key, None, ca_key, ca=True)
    files = [_write(tmp_path / "ca.pem", cert=ca)]
    for name, san in (("server", "127.0.0.1"), ("client", "")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, ca_key, ca.subject, key, san=san)
        files += [_write(tmp_path / f"{name}.pem", cert=cert), _write(tmp_path / f"{name}.key", key=key)]
    return tuple(files)


def test_link_connects_over_tls_with_client_certificate_and_is_refused_without(
        mosquitto_executable, tmp_path, pki):
    ca, server_cert, server_key, client_cert, client_key = pki
    port = free_port("127.0.0.1")
    broker = start_broker_with(mosquitto_executable, tmp_path / "tls",
                               f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {server_cert}\n"
                               f"keyfile {server_key}\nrequire_certificate true\n")
    url = f"mqtts://127.0.0.1:{port}"
    links = []
    try:
        with_cert = MqttLink(_mqtt_cfg(url, ca_file=str(ca), cert_file=str(client_cert),
                                       key_file=str(client_key)), "tls-cam", boot_id="b1")
        without_cert = MqttLink(_mqtt_cfg(url, ca_file=str(ca)), "no-cert", boot_id="b2")
        links += [with_cert, without_cert]
        with_cert.start()
        without_cert.start()
        assert with_cert.wait_connected(15), broker.log_text()
        assert with_cert.publish_result({"schema": 1, "seq": 1})
        assert not without_cert.wait_connected(3)
    finally:
        for link in links:
            link.stop(timeout=1)
        broker.close()


def _mqtt_cfg(url: str, **keys: str):
    return load_config(None, env={}, overrides={"broker": url, **{f"mqtt_{k}": v for k, v in keys.items()}}).mqtt
