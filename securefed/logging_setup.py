"""One log format for both daemons. Log lines carry reason codes, never key material."""

from __future__ import annotations

import logging
import os


def configure_logging(name: str) -> None:
    level = os.environ.get("SECUREFED_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
