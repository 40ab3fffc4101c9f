"""The catalogue of finding codes: every code a plan, a gate or a backfill can report.

A finding (``contracts.models.Finding``) carries a ``code``, a ``tier`` and a message.
This module says, for each code, which tiers it is emitted with, what it means and what
the user does about it. ``docs/reference/findings.md`` is generated from it
(``python -m airflow_kfm_migrations.contracts.reference``), and ``tests/test_reference.py``
scans the package source so that a code emitted anywhere is documented here, and a code
documented here is still emitted somewhere.

Tiers: ``hard_fail`` refuses the run; ``review_required`` refuses it unless a recorded
approval covers ``review:<code>`` (or ``review:<code>:<object>``); ``informational`` is
reported only. Codes named ``plan_*`` (and a few others) come from the static plan, before
anything is written.

This module sits in the contracts layer: it imports nothing of the package but the models.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_kfm_migrations.contracts.models import Tier


@dataclass(frozen=True)
class FindingCode:
    code: str
    tiers: tuple[Tier, ...]  # the tiers the code can be emitted with
    meaning: str  # what happened, and where it is detected
    next_step: str  # what the user does about it


_CODES = (
    FindingCode(
        "alias_flip_pending",
        ("informational",),
        "Search: an alias action of the forward is held back and will run in one atomic `_aliases` call "
        "when the run commits, after the gate passed.",
        "Nothing. Check in `diffs/summary.json` that the alias moves are the ones you meant.",
    ),
    FindingCode(
        "batched_protected_write",
        ("hard_fail",),
        "Graph apply or rollback: a batched statement (`CALL { ... } IN TRANSACTIONS`) tried to write a "
        "protected node (its properties or labels, delete it, or create or delete one of its "
        "relationships), or waited behind another writer that did. Its batches commit as they go, so it "
        "runs while the run holds the write lock of every protected node: the batch waited, the statement "
        "was stopped and that batch rolled back. No protected node changed; batches committed before it "
        "are undone by the compensation (the rollback artifact).",
        "Make the statement reach only allowed nodes: match by an allowed label and leave out nodes that "
        "also carry a protected label (`WHERE NOT n:Protected`) and relationships to protected nodes. If "
        "protected nodes are to change, record an approval covering `protected:<Label>`.",
    ),
    FindingCode(
        "blue_green",
        ("informational",),
        "Search static plan: the store has no transactions, so new indices are built beside the old ones, "
        "the alias flip waits for the gate, and an abort deletes the new indices.",
        "Nothing. It states how the run will proceed.",
    ),
    FindingCode(
        "cluster_object_changed",
        ("hard_fail",),
        "PostGIS gate or rollback: a database- or cluster-level object changed (roles, databases, settings, "
        "casts, languages, foreign servers, publications, subscriptions, event triggers, large objects, "
        "built-in objects...), and the run's own transaction wrote a system catalog behind it. No declared "
        "scope can allow this. Judged strictly, whoever changed them: replication slots (neither "
        "transactional nor in a catalog), kinds without known catalogs, and every such object in a "
        "`transactional: false` run. A rollback that changes one is not committed.",
        "Remove the statement that changes it from the forward (or rollback) script. Such changes are made "
        "outside governed migrations, by whoever administers the server. If the message names replication "
        "slots or a `transactional: false` run and the script did not touch the object, another session "
        "did: run again.",
    ),
    FindingCode(
        "cluster_statement",
        ("hard_fail",),
        "PostGIS static plan: a statement acts outside any schema (CREATE/ALTER/DROP ROLE, GRANT role, "
        "ALTER SYSTEM, CREATE DATABASE, tablespaces, subscriptions, event triggers, user mappings, LOAD, "
        "`COPY ... PROGRAM`).",
        "Remove the statement from the forward script; a migration may not run it.",
    ),
    FindingCode(
        "constraint_dropped",
        ("review_required",),
        "PostGIS and graph gate: a constraint was dropped.",
        "If intended, record an approval whose `covers` lists `review:constraint_dropped` (or "
        "`review:constraint_dropped:<object>`); otherwise fix the forward script.",
    ),
    FindingCode(
        "enforcement_disabled",
        ("review_required",),
        "PostGIS gate: foreign-key enforcement triggers were disabled (`ALTER TABLE ... DISABLE TRIGGER`).",
        "Re-enable the triggers in the forward script, or record an approval covering `review:enforcement_disabled`.",
    ),
    FindingCode(
        "forbidden_object_changed",
        ("hard_fail",),
        "Gate (all stores): an object in the forbidden scope was added, removed or changed (a forbidden "
        "schema or table, index pattern or alias, label or relationship type, or the store's governance "
        "objects). On search this includes a held-back alias action that touches forbidden scope.",
        "Change the forward script so it leaves forbidden objects alone. Forbidden scope is never "
        "approvable; if the object really must change, it does not belong in `forbidden_*`.",
    ),
    FindingCode(
        "foreign_index_written",
        ("hard_fail",),
        "Search gate: the write counters (uuid and sequence numbers of the primary shards, from "
        "`_stats?level=shards`) of a forbidden index, or of a protected one no approval covers, moved "
        "between the pre- and post-baseline: documents were written there during the run, even if its "
        "document count, mappings and settings stayed the same (an overwrite). Whoever wrote (the run "
        "by a path the plan did not see, or another client) it cannot be undone by the rollback artifact. "
        "The apply checks the same counters after every reindex and fails naming the index.",
        "Find what wrote there (a reindex script, an alias, another client) and restore the overwritten "
        "documents from a snapshot or the source of truth. Set `protect_with_write_block: true` to have "
        "such writes refused instead of only detected.",
    ),
    FindingCode(
        "forbidden_rewrite",
        ("hard_fail",),
        "PostGIS backfill batch: the storage of a table outside the allowed scope, or of a protected or "
        "forbidden table, was replaced (TRUNCATE or a rewrite). The batch was rolled back and the whole "
        "migration compensated.",
        "Find what rewrote the table (the batch statement, a trigger) and fix it; then run again.",
    ),
    FindingCode(
        "forbidden_write",
        ("hard_fail",),
        "Gate or backfill batch: rows (PostGIS) or documents (search) were written into a forbidden table "
        "or index, counted by the store itself, trigger and function writes included.",
        "Find the statement, trigger or function that writes there and stop it; forbidden scope is never approvable.",
    ),
    FindingCode(
        "global_object_changed_elsewhere",
        ("informational",),
        "PostGIS gate: a database- or cluster-level object (another database of the server, a role, a "
        "tablespace, a large object...) changed during the run, but the run's own transaction wrote none "
        "of the system catalogs its digest is read from (by the transaction's write counters, and no "
        "catalog row carries the transaction's id): another session changed it. Not judged; the schema "
        "fingerprint leaves such objects out, so a rollback is not refused for it either.",
        "Nothing, if the change was expected (databases and roles come and go on a shared server). If "
        "not, look for who made it on the server; a script that reaches another session (dblink, a "
        "loopback foreign server) is a known limit of the PostGIS store.",
    ),
    FindingCode(
        "governance_ledger_touched",
        ("hard_fail",),
        "PostGIS and graph gate: the migration wrote into the governance ledger (`kfm_governance` on "
        "PostGIS) or changed the graph ledger nodes or the lock/ledger schema.",
        "Remove whatever writes to the ledger from the forward script. Only the runner records runs.",
    ),
    FindingCode(
        "grant_widened",
        ("review_required",),
        "PostGIS gate: privileges on a table, view, sequence, schema, function, procedure, type or column "
        "were widened (a grantee gained a privilege, or a grant option, it did not have; for a new function "
        "or type, beyond the built-in defaults such as EXECUTE for PUBLIC).",
        "If intended, record an approval covering `review:grant_widened` (or "
        "`review:grant_widened:<object>`); otherwise narrow the GRANT.",
    ),
    FindingCode(
        "index_on_large_table",
        ("review_required",),
        "PostGIS gate: an index was built on a table whose estimated row count is above "
        "`KFM_REVIEW_INDEX_ROWS` (default 1,000,000).",
        "Record an approval covering `review:index_on_large_table`; consider `CREATE INDEX CONCURRENTLY` "
        "in a `transactional: false` migration to avoid long locks.",
    ),
    FindingCode(
        "interrupted_run_recovered",
        ("informational",),
        "Search: this run found the in-flight record of an earlier run of the same migration that was "
        "killed (its process gone, or its heartbeat stale, or its lock broken) and undid what it left: "
        "its reindex tasks cancelled, the indices it created deleted, its write blocks lifted; no alias "
        "moved. The message names them; the governance index keeps a `recovery` document.",
        "Nothing; find out why the earlier run died (its receipt may be missing).",
    ),
    FindingCode(
        "invariant_exclusive_labels",
        ("hard_fail",),
        "Graph gate: after the forward, some nodes carry both labels of a pair declared in "
        "`invariants.exclusive_labels`.",
        "Fix the forward script so no node carries both labels (the run was compensated).",
    ),
    FindingCode(
        "invariant_required_constraint",
        ("hard_fail",),
        "Graph gate: a constraint named in `invariants.required_constraints` does not exist after the forward.",
        "Keep (or create) the constraint in the forward script, or remove it from the invariants if it is "
        "no longer required.",
    ),
    FindingCode(
        "invariant_required_relationship",
        ("hard_fail",),
        "Graph gate: nodes of a label lack a relationship declared in `invariants.required_relationships`.",
        "Fix the forward script so every node of the label keeps the relationship.",
    ),
    FindingCode(
        "large_backfill",
        ("review_required",),
        "PostGIS gate: the run wrote more rows in total than `KFM_REVIEW_BACKFILL_ROWS` (default 100,000). "
        "A `backfill` section whose `max_rows` is above that threshold is refused at validation and "
        "preflight for the same reason.",
        "Record an approval covering `review:large_backfill`, and prefer a bounded, batched `backfill` "
        "section over one big UPDATE.",
    ),
    FindingCode(
        "limit_exceeded",
        ("hard_fail",),
        "Gate (all stores) or backfill batch: an observed number is above its declared limit (the "
        "finding's object names the limit). An undeclared limit is 0.",
        "Raise the limit in `limits` (or `backfill.max_rows`) if the change is meant to be that large, "
        "or narrow the change. Compare declared and observed values in `diffs/summary.json`.",
    ),
    FindingCode(
        "new_property_keys",
        ("informational",),
        "Graph gate: property keys were used for the first time in this graph (the token store never "
        "forgets a key, so this is reported, not fingerprinted).",
        "Nothing, unless a key is misspelt.",
    ),
    FindingCode(
        "non_transactional_statement",
        ("hard_fail",),
        "Static plan: a statement cannot run inside the run's transaction (PostGIS: `CREATE INDEX "
        "CONCURRENTLY`, `VACUUM`, `REINDEX CONCURRENTLY`...) or, on search, changes an existing index "
        "durably before the gate (`put_mapping`, `put_settings`), while the declaration keeps "
        "`transactional: true`.",
        "Declare `transactional: false` with a `non_transactional_reason`, and make sure the rollback "
        "script undoes the change: the run is then gated after the change and compensated on failure.",
    ),
    FindingCode(
        "object_added",
        ("informational",),
        "Gate (all stores): an object was created within the declared scope.",
        "Nothing. Check it is one you meant to create.",
    ),
    FindingCode(
        "object_changed",
        ("informational",),
        "Gate (all stores): an object within the declared scope changed.",
        "Nothing. Check it is one you meant to change.",
    ),
    FindingCode(
        "object_removed",
        ("informational",),
        "Gate (all stores): an object within the declared scope was removed.",
        "Nothing. Check it is one you meant to remove.",
    ),
    FindingCode(
        "opaque_non_transactional",
        ("hard_fail",),
        "PostGIS static plan: a `transactional: false` migration contains a statement whose effects the "
        "plan cannot see (DO block, function, CALL, SELECT, EXECUTE). Without the transaction nothing "
        "could undo what the gate would refuse.",
        "Move that statement into a transactional migration of its own.",
    ),
    FindingCode(
        "opaque_statement",
        ("informational",),
        "PostGIS static plan: a statement (DO block, function, CALL) hides its effects from the plan; the "
        "observed diff decides.",
        "Nothing. The gate judges what the catalog and the write counters observed.",
    ),
    FindingCode(
        "out_of_scope_change",
        ("hard_fail",),
        "Gate (all stores): an object outside the allowed scope was added, removed or changed. On search "
        "this includes a held-back alias action outside the allowed aliases or index patterns.",
        "Widen `scope.allowed_*` if the change is intended (reviewers see it), or fix the forward script.",
    ),
    FindingCode(
        "out_of_scope_write",
        ("hard_fail",),
        "Gate or backfill batch: rows or documents were written into a table or index outside the allowed "
        "scope (trigger and function writes included).",
        "Widen the allowed scope if intended, or stop the statement, trigger or function that writes there.",
    ),
    FindingCode(
        "plan_admin_command",
        ("hard_fail",),
        "Graph static plan: a statement is an administration command (databases, users, roles, privileges).",
        "Remove it from the script; a migration may not run it.",
    ),
    FindingCode(
        "plan_batched_unbound",
        ("hard_fail",),
        "Graph EXPLAIN preflight: a batched statement (`CALL { ... } IN TRANSACTIONS`, which commits as it "
        "goes) binds nodes or relationships from the whole graph (an all-node or all-relationship scan, a "
        "lookup by id), calls a procedure, or uses a label or type built at run time. Refused before the "
        "first write; the graph is unchanged.",
        "Match the nodes by an allowed label (`MATCH (n:Allowed) ...`) and relationships by an allowed "
        "type, without procedures or dynamic labels; or write the statement without `IN TRANSACTIONS`, so "
        "that it is checked before it commits.",
    ),
    FindingCode(
        "plan_delete_not_created",
        ("hard_fail",),
        "Search static plan: a `delete_index` action names an index that this migration does not create "
        "(in the forward: not created earlier in it; in the rollback: not created by the forward).",
        "Delete only indices the migration builds. Old indices are removed later by `kfm-migrations gc`.",
    ),
    FindingCode(
        "plan_forbidden_target",
        ("hard_fail",),
        "Static plan (all stores): a statement or action names a forbidden target: a forbidden schema, "
        "table, index, alias, label or relationship type, a dot-index, or the store's governance objects.",
        "Change the script so it does not touch forbidden scope.",
    ),
    FindingCode(
        "plan_guarded_source",
        ("hard_fail",),
        "Search static plan: a reindex reads from a forbidden index, or from a protected one without an "
        "approval covering `protected:<index>`. Checked again on the cluster before the reindex starts, "
        "where a source alias resolving to such an index fails the apply.",
        "Reindex from an allowed index. If a protected index really is to be copied, set "
        "`approvals.change_class: governance-critical` and record an approval covering "
        "`protected:<index>`; a forbidden index is never a source.",
    ),
    FindingCode(
        "plan_out_of_scope",
        ("hard_fail",),
        "Static plan (all stores): a statement or action names a target outside the allowed scope.",
        "Add the target to `scope.allowed_*` if intended, or fix the script.",
    ),
    FindingCode(
        "plan_protected_target",
        ("hard_fail",),
        "Static plan (all stores): a statement or action names a protected target without an approval "
        "covering `protected:<target>`.",
        "If the change is intended: set `approvals.change_class: governance-critical` and record an "
        "approval whose `covers` lists `protected:<target>`. Otherwise fix the script.",
    ),
    FindingCode(
        "plan_schema_target_unknown",
        ("hard_fail",),
        "Graph static plan or preflight: a CREATE CONSTRAINT/INDEX statement names no label or relationship "
        "type that can be read from its `FOR` pattern (e.g. a token lookup index, which covers every "
        "label). Schema statements commit at once and cannot be EXPLAINed, so their target must be "
        "readable.",
        "Write the target as `FOR (n:Label)` or `FOR ()-[r:TYPE]-()` with an allowed label or type. Token "
        "lookup indexes are managed outside migrations.",
    ),
    FindingCode(
        "plan_unsafe_script",
        ("hard_fail",),
        "Search static plan: a reindex script (forward or rollback) names `ctx` other than as "
        "`ctx._source` or `ctx._id` (in code, strings or comments). Such a script could set `ctx._index`, "
        "`ctx._routing` or `ctx.op` and write documents into another index (e.g. overwrite a protected "
        "one), shard or operation than its dest. The rule is about words, so `ctx['_index']`, "
        "`ctx.put(...)` and `def c = ctx` are refused too.",
        "Rewrite the script to read and change only `ctx._source` (and `ctx._id`); filter with the "
        "reindex `query` instead of `ctx.op = 'noop'`.",
    ),
    FindingCode(
        "plan_use_clause",
        ("hard_fail",),
        "Graph static plan: a statement switches graphs with `USE`, so the declared scope cannot be enforced.",
        "Remove the `USE` clause; the connection decides the database.",
    ),
    FindingCode(
        "policy_dropped",
        ("review_required",),
        "PostGIS gate: a row-level security policy was dropped.",
        "If intended, record an approval covering `review:policy_dropped` (or `review:policy_dropped:<object>`).",
    ),
    FindingCode(
        "procedural_transaction_control",
        ("hard_fail",),
        "PostGIS static plan: a DO block runs COMMIT or ROLLBACK in its PL/pgSQL body, or a CALL runs a "
        "procedure the same scripts create whose body does. A governed run owns its transaction in both "
        "modes: a transactional run would fail with SQLSTATE 2D000 (invalid transaction termination), and a "
        "`transactional: false` run may not hide effects in procedural code. At run time the same "
        "refusal names the backfill when the server raises 2D000 for a body the plan could not read.",
        "Move the batched data change into the declaration's `backfill:` section, which runs it in "
        "key-ordered batches that each commit, after the schema part (see docs/operations.md#backfills). "
        "Keep the schema change in `forward.sql`, without COMMIT or ROLLBACK.",
    ),
    FindingCode(
        "protected_change_approved",
        ("informational",),
        "Gate: a protected object changed, and a recorded approval covers `protected:<object>`.",
        "Nothing. The approval is named in the receipt and the summary.",
    ),
    FindingCode(
        "protected_domain_changed",
        ("hard_fail",),
        "Gate: a protected object (table, rows of a protected table, index, label and its nodes) changed "
        "without an approval covering `protected:<object>`. On search this includes a held-back alias "
        "action onto a protected index.",
        "If intended: `change_class: governance-critical` and a recorded approval covering "
        "`protected:<object>`. Otherwise find what changed it.",
    ),
    FindingCode(
        "protected_fingerprint_changed",
        ("hard_fail",),
        "Gate: the protected-domain fingerprint changed although no single protected object shows as changed.",
        "Treat as a protected change: compare `baselines/pre.json` and `baselines/post.json` and find "
        "what changed the protected domain.",
    ),
    FindingCode(
        "rollback_incomplete",
        ("hard_fail",),
        "Rollback or compensation: after the rollback artifact ran, this object still differs from the "
        "pre-baseline the rollback must restore (the apply's pre-baseline, or the run's own pre-baseline "
        "for a compensation). Listed in `diffs/rollback.json` of the run's folder; nothing was committed "
        "on a transactional store.",
        "Compare the object in `diffs/rollback.json` with the apply's `baselines/pre.json`, fix "
        "`rollback.*` so that it undoes the forward exactly, and run the rollback again.",
    ),
    FindingCode(
        "protected_guard_failed",
        ("hard_fail",),
        "Graph apply or rollback: a batched statement was not run because the run could not hold the "
        "write lock of every protected node while it would run (another transaction held one for longer "
        "than the statement timeout, or the server did not show the locks).",
        "Find the transaction that holds the protected nodes (`SHOW TRANSACTIONS`), let it finish, and run "
        "again.",
    ),
    FindingCode(
        "protected_write",
        ("hard_fail",),
        "Gate or backfill batch: rows or documents were written into a protected table or index without "
        "an approval covering `protected:<table>`.",
        "If intended: `change_class: governance-critical` and an approval covering `protected:<table>`. "
        "Otherwise stop the write.",
    ),
    FindingCode(
        "rls_disabled",
        ("review_required",),
        "PostGIS gate: row-level security was disabled on a table, or is no longer forced.",
        "If intended, record an approval covering `review:rls_disabled`; otherwise keep RLS enabled.",
    ),
    FindingCode(
        "transaction_control",
        ("hard_fail",),
        "PostGIS static plan: the script contains BEGIN, COMMIT, ROLLBACK, SAVEPOINT or another "
        "transaction-control statement. The runner owns the transaction.",
        "Remove the transaction-control statements from the script.",
    ),
    FindingCode(
        "table_dropped",
        ("review_required",),
        "PostGIS gate: a table was dropped, and its rows with it (a rename is not a drop: the session "
        "checks whether the table's storage survived under another name). Rebuildable stores can be "
        "rebuilt, but a drop is the one change that destroys data outright, so a reviewer decides. What "
        "the table carried went with it and is not reported again: `rls_disabled`, `policy_dropped` and "
        "`constraint_dropped` are left out for it.",
        "If intended, record an approval covering `review:table_dropped` (or "
        "`review:table_dropped:<schema.table>`); otherwise keep the table.",
    ),
    FindingCode(
        "table_rewritten",
        ("review_required",),
        "PostGIS gate or backfill batch: the storage of an allowed table was replaced (TRUNCATE, VACUUM "
        "FULL, a column type change...), seen by its `relfilenode`. In a backfill batch without the "
        "approval the batch is rolled back and the migration compensated.",
        "If intended, record an approval covering `review:table_rewritten`; otherwise avoid the rewrite.",
    ),
    # PostGIS: the policy-enforcement posture (stores/postgis/posture*.py, bodies.py, reads.py).
    FindingCode(
        "trigger_dropped",
        ("review_required",),
        "PostGIS gate: a trigger (any trigger, not only the internal foreign-key ones) was dropped from a "
        "table that is still there. Audit and validation triggers are how many databases enforce policy.",
        "If intended, record an approval covering `review:trigger_dropped` (or "
        "`review:trigger_dropped:<object>`); otherwise keep the trigger.",
    ),
    FindingCode(
        "trigger_disabled",
        ("review_required",),
        "PostGIS gate: a trigger now fires in fewer sessions than before: `ALTER TABLE ... DISABLE TRIGGER`, "
        "`ENABLE REPLICA TRIGGER` (it then fires only under `session_replication_role = replica`), or "
        "`ENABLE ALWAYS` undone.",
        "Re-enable the trigger in the forward script, or record an approval covering `review:trigger_disabled`.",
    ),
    FindingCode(
        "rule_dropped",
        ("review_required",),
        "PostGIS gate: a rewrite rule was dropped from a table that is still there (a rule such as "
        "`ON DELETE DO INSTEAD NOTHING` enforces policy).",
        "If intended, record an approval covering `review:rule_dropped`; otherwise keep the rule.",
    ),
    FindingCode(
        "rule_disabled",
        ("review_required",),
        "PostGIS gate: a rewrite rule now fires in fewer sessions than before (`ALTER TABLE ... DISABLE RULE`, "
        "`ENABLE REPLICA RULE`).",
        "Re-enable the rule in the forward script, or record an approval covering `review:rule_disabled`.",
    ),
    FindingCode(
        "policy_loosened",
        ("review_required",),
        "PostGIS gate: a row-level security policy changed in a way that is not provably narrowing: a "
        "PERMISSIVE policy that applies to more roles or another command, or whose USING or WITH CHECK "
        "lost an AND-ed condition; a RESTRICTIVE policy that restricts fewer roles or commands or lost a "
        "condition; or RESTRICTIVE turned PERMISSIVE. Adding AND-ed conditions and removing roles (of a "
        "permissive policy) pass; the rule is in [the PostGIS posture](../stores/postgis.md#posture).",
        "If the wider access is intended, record an approval covering `review:policy_loosened` (or "
        "`review:policy_loosened:<object>`); otherwise narrow the policy.",
    ),
    FindingCode(
        "policy_permissive_added",
        ("review_required",),
        "PostGIS gate: a PERMISSIVE policy was added to a table that had row-level security enabled. "
        "Permissive policies are OR-ed, so it admits rows the other policies did not. A RESTRICTIVE "
        "policy, which only narrows, passes; a dropped RESTRICTIVE policy is `policy_dropped`.",
        "Make it `AS RESTRICTIVE` if it is meant to narrow access; otherwise record an approval covering "
        "`review:policy_permissive_added`.",
    ),
    FindingCode(
        "security_definer_added",
        ("review_required",),
        "PostGIS gate: a function or procedure was created SECURITY DEFINER, or an existing one made "
        "SECURITY DEFINER: it runs with its owner's privileges, whoever calls it.",
        "Prefer SECURITY INVOKER. If the definer's rights are needed, pin `SET search_path`, revoke "
        "EXECUTE from PUBLIC, and record an approval covering `review:security_definer_added`.",
    ),
    FindingCode(
        "owner_changed",
        ("review_required",),
        "PostGIS gate: the owner of a relation, function, schema, type or other schema object changed "
        "(`ALTER ... OWNER TO`), or the run created an object owned by a role other than its own. An "
        "owner holds every privilege on the object and can change its policies.",
        "If intended, record an approval covering `review:owner_changed` (or "
        "`review:owner_changed:<object>`); otherwise leave the owner as it was.",
    ),
    FindingCode(
        "default_privileges_widened",
        ("review_required",),
        "PostGIS gate: `ALTER DEFAULT PRIVILEGES` now grants a role privileges on objects created in the "
        "future that it did not get before (or an entry that revoked the built-in defaults, such as "
        "EXECUTE for PUBLIC, was removed).",
        "If intended, record an approval covering `review:default_privileges_widened`; otherwise grant on "
        "the objects themselves.",
    ),
    FindingCode(
        "body_references_guarded",
        ("hard_fail",),
        "PostGIS gate: code the run created or changed refers to a forbidden or protected table, view, "
        "sequence, schema or function: a function or procedure body (SQL and PL/pgSQL, read with pglast), "
        "a trigger and its function, a view or rule (from `pg_depend`), a policy expression, a column "
        "default or check constraint, or a user-defined function any of these calls. It would read or "
        "write that object whenever it runs, after the gate (a trigger that writes into an audit schema on "
        "every future insert is a time bomb). The message names the object and the function it was "
        "reached through. No approval lifts it.",
        "Remove the reference. Code that must touch a guarded object belongs to whoever owns that scope, "
        "not to this migration. An unqualified name counts for every schema holding that name unless the "
        "function pins `SET search_path`.",
    ),
    FindingCode(
        "body_dynamic_sql",
        ("review_required",),
        "PostGIS gate: code the run created or changed runs SQL built at run time, which cannot be "
        "analysed: PL/pgSQL `EXECUTE`, `OPEN ... FOR EXECUTE`, `RETURN QUERY EXECUTE` of a string that is "
        "not a constant, or functions that run or read what they are given (`query_to_xml`, "
        "`table_to_xml` of a computed name, `dblink`...). A constant string is read like any other SQL.",
        "Write the statement statically if you can. Otherwise review what the string can become and "
        "record an approval covering `review:body_dynamic_sql` (or `review:body_dynamic_sql:<object>`).",
    ),
    FindingCode(
        "body_unanalysable",
        ("review_required",),
        "PostGIS gate: code the run created or changed cannot be analysed: a language other than SQL and "
        "PL/pgSQL, a PL/pgSQL body the offline parser cannot compile (for example a field assignment to a "
        "`%ROWTYPE` variable), or more than 500 functions reached from the changed objects.",
        "Review the code and record an approval covering `review:body_unanalysable` (or "
        "`review:body_unanalysable:<object>`); or rewrite it in plain SQL or PL/pgSQL (use a `record` "
        "variable for field assignments).",
    ),
    FindingCode(
        "forbidden_read",
        ("hard_fail",),
        "PostGIS gate: the script read a forbidden table, seen through the transaction's own scan counters "
        "(sequential and index scans, `pg_stat_xact_all_tables`) taken right before and after it: by "
        "dynamic SQL, a function, a trigger, a view, or a foreign-key check. The runner's own reads (the "
        "baselines' row digests) are outside that window. Transactional runs only.",
        "Remove the read. If reading it is intended (for example a foreign key into it), record an "
        "approval covering `read:<schema>.<table>`.",
    ),
    FindingCode(
        "protected_copy",
        ("hard_fail",),
        "PostGIS gate: the script read a protected table (scan counters, as for `forbidden_read`) and "
        "wrote rows into another table in the same run: rows may have been copied out of it. Reading a "
        "protected table without writing elsewhere passes.",
        "Remove the copy. If it is intended, record an approval covering `read:<schema>.<table>`.",
    ),
    FindingCode(
        "plan_forbidden_read",
        ("hard_fail",),
        "PostGIS static plan: a statement reads a forbidden table as a source (SELECT, INSERT ... SELECT, "
        "CREATE TABLE AS, SELECT INTO, UPDATE ... FROM, DELETE ... USING, MERGE ... USING, COPY ... TO).",
        "Remove the read, or record an approval covering `read:<schema>.<table>`.",
    ),
    FindingCode(
        "plan_protected_copy",
        ("hard_fail",),
        "PostGIS static plan: a statement that writes (INSERT ... SELECT, CREATE TABLE AS, SELECT INTO, "
        "UPDATE ... FROM, MERGE ... USING) or copies out (COPY ... TO) reads a protected table as a "
        "source. A plain SELECT of a protected table passes.",
        "Remove the copy, or record an approval covering `read:<schema>.<table>`.",
    ),
    FindingCode(
        "guarded_read_approved",
        ("informational",),
        "PostGIS static plan or gate: a forbidden table was read, or a protected one copied, and a "
        "recorded approval covers `read:<schema>.<table>`.",
        "Nothing. The approval is named in the finding and the receipt.",
    ),
)

FINDING_CODES: dict[str, FindingCode] = {c.code: c for c in sorted(_CODES, key=lambda c: c.code)}

__all__ = ["FINDING_CODES", "FindingCode"]
