"""The TLS context for HTTPS: TLS 1.2 or newer, optional client certificates."""

import ssl

from .config import Config


def make_ssl_context(config: Config) -> ssl.SSLContext | None:
    """Build the server's TLS context from --certfile, --keyfile and --ca-file; None without TLS.

    Raises OSError (ssl.SSLError is one) when a file is missing or does not hold
    what it should.
    """
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.certfile, config.keyfile)
    if config.ca_file:
        context.load_verify_locations(cafile=config.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
