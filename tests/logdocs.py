"""Hand-written log documents and indexing helpers shared by the log store and extraction tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flywheel.demo.seed import put_log_index_template
from flywheel.extract.sources.elasticsearch import ElasticsearchSource, connect

START = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
END = START + timedelta(days=1)
WORKLOAD = "router"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_doc(moment: datetime, n: int, *, client: str = "web", workload: str = WORKLOAD) -> dict:
    return {
        "timestamp": iso(moment),
        "workload_id": workload,
        "client_id": client,
        "request": {"messages": [{"role": "user", "content": f"where is order A-{n}?"}], "tools": []},
        "response": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {
                                    "name": "get_order_status",
                                    "arguments": f'{{"order_id": "A-{n}"}}',
                                },
                            }
                        ],
                    }
                }
            ]
        },
    }


def clean_doc(moment: datetime, n: int, **kwargs: str) -> dict:
    """A log document that passes validation: :func:`log_doc` with the called tool offered."""
    doc = log_doc(moment, n, **kwargs)
    doc["request"]["tools"] = [{"type": "function", "function": {"name": "get_order_status"}}]
    return doc


def index_docs(source: ElasticsearchSource, docs: list[dict]) -> None:
    """Write documents into a fresh index matching ``source.index`` through the production client path."""
    from elasticsearch.helpers import bulk

    client = connect(source.conn_id)
    put_log_index_template(client, source)
    ok, errors = bulk(client, ({"_index": source.index[:-1] + "2026.11.20", "_source": d} for d in docs))
    assert ok == len(docs) and not errors
    client.indices.refresh(index=source.index)
