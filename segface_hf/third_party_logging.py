"""Filters for third-party log records that say nothing to a user of this package. Imported first by the package.

- torchao (which ExecuTorch installs) registers two Enum classes with torch's pytree when transformers imports it,
  and torch 2.14 answers each registration with a deprecation warning on stderr: a note to torchao's developers.
"""

from __future__ import annotations

import logging

TORCHAO_ENUM_NOTICE = "is an Enum subclass and is now natively supported"


def not_torchao_enum_notice(record: logging.LogRecord) -> bool:
    """False for torch's notice about torchao's Enum registrations, True for every other record."""
    return TORCHAO_ENUM_NOTICE not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(not_torchao_enum_notice)
