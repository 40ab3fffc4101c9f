"""W3C PROV bundle of a run, serialised as JSON-LD through rdflib.

The run is a prov:Activity, every input and output a prov:Entity carrying its sha256,
the actor a prov:Agent.
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import RunReceipt

NS = "https://airflow-kfm-migrations.dev/ns#"


def prov_jsonld(receipt: RunReceipt) -> bytes:
    from prov.model import ProvDocument

    doc = ProvDocument()
    doc.add_namespace("kfm", NS)
    run = doc.activity(
        f"kfm:run-{receipt.run_id}",
        receipt.started_at,
        receipt.finished_at,
        {
            "kfm:migration_id": receipt.migration_id,
            "kfm:operation": receipt.operation,
            "kfm:status": receipt.status,
            "kfm:environment": receipt.environment,
        },
    )
    actor = doc.agent(f"kfm:agent-{_safe(receipt.actor)}", {"kfm:name": receipt.actor})
    doc.wasAssociatedWith(run, actor)
    for ref in receipt.inputs:
        ent = doc.entity(
            f"kfm:sha256-{ref.sha256}", {"kfm:path": ref.path, "kfm:role": ref.role, "kfm:sha256": ref.sha256}
        )
        doc.used(run, ent)
    for ref in receipt.outputs:
        ent = doc.entity(
            f"kfm:sha256-{ref.sha256}", {"kfm:path": ref.path, "kfm:role": ref.role, "kfm:sha256": ref.sha256}
        )
        doc.wasGeneratedBy(ent, run)
        doc.wasAttributedTo(ent, actor)
    out: Any = doc.serialize(format="rdf", rdf_format="json-ld")
    return out.encode() if isinstance(out, str) else bytes(out)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
