"""Request bodies and the configurations test servers start with, kept as files."""

from pathlib import Path

PAYLOADS = Path(__file__).resolve().parent
CONFIGURATIONS = PAYLOADS / "configurations"
