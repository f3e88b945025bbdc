"""The TLS context for HTTPS: TLS 1.2 or newer, optional client certificates."""

import ssl

from .config import Config
from .errors import StartupError, describe_os_error


def make_ssl_context(config: Config) -> ssl.SSLContext | None:
    """Build the server's TLS context from --certfile, --keyfile and --ca-file; None without TLS.

    Raises StartupError naming the option when a file is missing or does not
    hold what it should.
    """
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except OSError as exc:
        raise StartupError(
            f"certificate {config.certfile} (--certfile) or key {config.keyfile} (--keyfile) "
            f"cannot be used: {describe_os_error(exc)}"
        ) from exc
    if config.ca_file:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except OSError as exc:
            raise StartupError(f"CA file {config.ca_file} (--ca-file) cannot be used: {describe_os_error(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context
