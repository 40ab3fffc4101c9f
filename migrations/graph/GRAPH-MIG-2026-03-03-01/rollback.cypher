// Undo GRAPH-MIG-2026-03-03-01: relabel back the nodes this migration marked, drop the constraint.
MATCH (n:Dataset {kfm_relabeled_by: 'GRAPH-MIG-2026-03-03-01'})
SET n:LegacyDataset
REMOVE n:Dataset, n.kfm_relabeled_by;
DROP CONSTRAINT dataset_id_unique IF EXISTS;
