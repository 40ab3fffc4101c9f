from __future__ import annotations

from typing import Any

from .base import MigrationOperator


class BaselineOperator(MigrationOperator):
    """Capture a baseline (``phase`` pre or post) from the committed state of the store.

    The transactional guard takes its own pre/post inside the apply transaction; these
    are the out-of-transaction views a reviewer (and the diff gate) compares against.
    """

    template_fields = (*MigrationOperator.template_fields, "phase")

    def __init__(self, *, phase: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if phase not in {"pre", "post"}:
            raise ValueError("phase must be 'pre' or 'post'")
        self.phase = phase

    def execute(self, context: Any) -> dict[str, Any]:
        from ..digest import write_json
        from ..lifecycle import open_store

        _s, bundle, opts = self.run_options(context)
        store: Any = open_store(bundle.type, opts.conn_id, use_hook=True)
        baseline = store.committed_baseline(bundle)
        path = opts.artifacts_dir / "baselines" / f"committed-{self.phase}.json"
        digest = write_json(path, baseline.model_dump(mode="json", by_alias=True))
        self.log.info(
            "%s baseline: %d objects, schema %s, protected %s",
            self.phase,
            len(baseline.objects),
            baseline.schema_fingerprint[:16],
            baseline.protected_fingerprint[:16],
        )
        return {
            "sha256": digest,
            "schema_fingerprint": baseline.schema_fingerprint,
            "protected_fingerprint": baseline.protected_fingerprint,
            "objects": len(baseline.objects),
        }
