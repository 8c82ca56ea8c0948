"""A user's own log source, named in a config by its dotted path: ``my_flywheel.sources:ArchiveSource``.

It reads an archive that keeps one JSONL file per workload and hour, ``<root>/<workload_id>/<hour>.jsonl``
with the hour as ``2026-11-20T02``, and shows everything a source provides: its options as fields,
pages of at most ``page_size`` records, each with the source's own id, and how it read.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from pydantic import Field

from flywheel.extract.documents import RawRecord, as_text, decode_document, field_epoch_ms
from flywheel.extract.sources import LogSource, LogWindow, ReadReport


class ArchiveSource(LogSource):
    """Hourly JSONL files of one workload each, in a local folder."""

    type: str = "my_flywheel.sources:ArchiveSource"
    root: str = Field(..., min_length=1, description="Folder holding one subfolder per workload.")

    def pages(self, window: LogWindow, page_size: int, report: ReadReport) -> Iterator[list[RawRecord]]:
        report.method = "hourly-jsonl"
        start_ms, end_ms = (int(moment.timestamp() * 1000) for moment in (window.start, window.end))
        page: list[RawRecord] = []
        hour = window.start.replace(minute=0, second=0, microsecond=0)
        while hour < window.end:
            path = Path(self.root, window.workload_id, f"{hour:%Y-%m-%dT%H}.jsonl")
            lines = path.read_bytes().splitlines() if path.is_file() else []
            for number, line in enumerate(lines, start=1):
                document = decode_document(line)
                moment = field_epoch_ms(document, self.timestamp_field)
                # Every file holds one workload; a record without a readable timestamp is kept for
                # validation to quarantine, not dropped.
                if moment is not None and not start_ms <= moment < end_ms:
                    continue
                client = document.get(self.client_field)
                if window.client_ids and (client is None or as_text(client) not in window.client_ids):
                    continue
                page.append(RawRecord(f"{path}/line-{number}", document))
                if len(page) == page_size:
                    yield page
                    page = []
            hour += timedelta(hours=1)
        if page:
            yield page
