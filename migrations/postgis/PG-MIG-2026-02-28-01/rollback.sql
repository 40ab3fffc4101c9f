-- Undo PG-MIG-2026-02-28-01: drop the spatial index created by forward.sql.
SET search_path = public;
DROP INDEX IF EXISTS parcels_geom_gist;
