// GRAPH-MIG-2026-03-03-01: unique dataset ids, then relabel legacy nodes.
// Schema and data statements run in separate transactions (Neo4j requires it).
CREATE CONSTRAINT dataset_id_unique IF NOT EXISTS FOR (d:Dataset) REQUIRE d.dataset_id IS UNIQUE;
MATCH (n:LegacyDataset)
SET n:Dataset, n.kfm_relabeled_by = 'GRAPH-MIG-2026-03-03-01'
REMOVE n:LegacyDataset;
