-- PG-MIG-2026-02-28-01: spatial index on parcels for map queries.
SET search_path = public;
CREATE INDEX IF NOT EXISTS parcels_geom_gist ON parcels USING gist (geom);
