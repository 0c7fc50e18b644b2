"""Report sections of prune-train (placeholder replaced below)."""
from charbench.pages import Section
from charbench.report import RunData


def report_sections(data: RunData) -> list[Section]:
    return []
