"""Completion webhooks (docs/webhooks.md): the package's public names."""

from service.jobs.webhooks.delivery import Webhooks, check_url, forbidden, literal_ip, secret_source, signature

__all__ = ["Webhooks", "check_url", "forbidden", "literal_ip", "secret_source", "signature"]
